from django.urls import path

from devices import views

app_name = "devices"

urlpatterns = [
    path("", views.device_list, name="list"),
    # Two path segments: no device key (one segment) can shadow it.
    path("partials/rows/", views.device_rows, name="rows"),
    path("groups/<int:pk>/", views.group_detail, name="group"),
    path("groups/<int:pk>/catch-up/", views.group_catch_up, name="group-catch-up"),
    path("groups/<int:pk>/desired/", views.edit_group_desired, name="group-desired"),
    path("<str:key>/", views.device_detail, name="detail"),
    path("<str:key>/shadow/edit/", views.edit_desired, name="edit-desired"),
    path("<str:key>/commands/send/", views.send_command, name="send-command"),
    path("<str:key>/live/<slug:section>/", views.device_section, name="section"),
]
