"""Routes of the rules API; `iotfleet/api_urls.py` merges this registry into the /api/v1/ router."""

from rest_framework.routers import SimpleRouter

router = SimpleRouter()

urlpatterns = router.urls
