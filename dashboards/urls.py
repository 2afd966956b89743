from django.urls import path

from dashboards import views

app_name = "dashboards"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("overview/status/", views.overview_status, name="overview-status"),
    path("overview/ingest/", views.overview_ingest, name="overview-ingest"),
]
