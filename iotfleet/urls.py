from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

admin.site.site_header = "IoTFleet"
admin.site.site_title = "IoTFleet"
admin.site.index_title = "Fleet administration"

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
    path("admin/", admin.site.urls),
    path("api/v1/", include("iotfleet.api_urls")),
]
