from django.urls import path

from maintenance import views

app_name = "maintenance"

urlpatterns = [
    path("at-risk/", views.at_risk, name="at-risk"),
    path("at-risk/table/", views.at_risk_table, name="at-risk-table"),
    path("devices/<str:key>/", views.device_health, name="device-health"),
    path("devices/<str:key>/section/", views.device_health_section, name="device-health-section"),
]
