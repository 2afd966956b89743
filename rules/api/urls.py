"""Routes of the rules API; `iotfleet/api_urls.py` merges this registry into the /api/v1/ router."""

from rest_framework.routers import SimpleRouter

from .views import RuleViewSet

router = SimpleRouter()
router.register("rules", RuleViewSet, basename="rule")

urlpatterns = router.urls
