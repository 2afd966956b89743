"""OTA pages (/ota/...) and the devices' firmware downloads."""

from django.urls import path

from . import downloads, views

app_name = "ota"

urlpatterns = [
    path("download/<str:token>/", downloads.download, name="download"),
    path("firmware/", views.releases, name="releases"),
    path("firmware/new/", views.release_new, name="release-new"),
    path("firmware/keys/new/", views.key_new, name="key-new"),
    path("rollouts/", views.rollouts, name="rollouts"),
    path("rollouts/rows/", views.rollouts_partial, name="rollouts-partial"),
    path("rollouts/in-progress/", views.in_progress, name="in-progress"),
    path("rollouts/new/", views.rollout_new, name="rollout-new"),
    path("rollouts/preview/", views.rollout_preview, name="rollout-preview"),
    path("rollouts/<int:pk>/", views.rollout, name="rollout"),
    path("rollouts/<int:pk>/progress/", views.rollout_progress, name="rollout-progress"),
    path("rollouts/<int:pk>/<slug:action>/", views.rollout_action, name="rollout-action"),
    path("devices/<str:key>/firmware/", views.device_firmware, name="device-firmware"),
]
