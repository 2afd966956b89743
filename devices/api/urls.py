"""Routes of the devices API. `iotfleet/api_urls.py` merges this registry into the /api/v1/ router,
so every app's endpoints share one API root."""

from rest_framework.routers import SimpleRouter

from .views import (
    CommandViewSet,
    DeviceGroupViewSet,
    DeviceTypeViewSet,
    DeviceViewSet,
    TenantViewSet,
)

router = SimpleRouter()
router.register("tenants", TenantViewSet, basename="tenant")
router.register("device-types", DeviceTypeViewSet, basename="device-type")
router.register("groups", DeviceGroupViewSet, basename="device-group")
router.register("devices", DeviceViewSet, basename="device")
router.register("commands", CommandViewSet, basename="command")

urlpatterns = router.urls
