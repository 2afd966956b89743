"""OTA pages (/ota/...) and the devices' firmware downloads."""

from django.urls import path

from . import downloads

app_name = "ota"

urlpatterns = [
    path("download/<str:token>/", downloads.download, name="download"),
]
