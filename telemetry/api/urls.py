"""Routes of the telemetry API, included under /api/v1/ by `iotfleet/api_urls.py`.

The views hang under the devices' and groups' URLs, so they are plain paths; `router` stays empty
until the app has a collection of its own to register (then add it to `APP_ROUTERS`).
"""

from django.urls import path
from rest_framework.routers import SimpleRouter

from .views import DeviceLatestView, DeviceReadingsView, GroupLatestView, TelemetryIngestView

router = SimpleRouter()

# `str` matches any key up to the next '/', so keys with '.' and ':' work.
urlpatterns = [
    path("devices/<str:key>/readings/", DeviceReadingsView.as_view(), name="device-readings"),
    path("devices/<str:key>/latest/", DeviceLatestView.as_view(), name="device-latest"),
    path("groups/<int:pk>/latest/", GroupLatestView.as_view(), name="device-group-latest"),
    path("telemetry/", TelemetryIngestView.as_view(), name="telemetry-ingest"),
    *router.urls,
]
