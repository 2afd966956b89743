"""Routes of the alerts API: alerts (`views.py`) and notification channels (`channels.py`);
`iotfleet/api_urls.py` merges this registry into the /api/v1/ router."""

from rest_framework.routers import SimpleRouter

from .channels import router as channels_router
from .views import router as alerts_router

router = SimpleRouter()
router.registry.extend(alerts_router.registry)
router.registry.extend(channels_router.registry)

urlpatterns = router.urls
