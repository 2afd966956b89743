from django.contrib import admin
from django.urls import include, path

admin.site.site_header = "IoTFleet"
admin.site.site_title = "IoTFleet"
admin.site.index_title = "Fleet administration"

urlpatterns = [
    path("", include("dashboards.urls")),
    path("devices/", include("devices.urls")),
    path("alerts/", include("alerts.urls")),
    path("maintenance/", include("maintenance.urls")),
    path("admin/", admin.site.urls),
    path("api/v1/", include("iotfleet.api_urls")),
    path("ota/", include("ota.urls")),
]
