from django.apps import AppConfig


class OtaConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "ota"
