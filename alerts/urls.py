from django.urls import path

from alerts import views

app_name = "alerts"

urlpatterns = [
    path("", views.alert_list, name="list"),
    path("rows/", views.alert_rows, name="rows"),
    path("act/", views.act_on_alerts, name="act"),
]
