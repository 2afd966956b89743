"""The REST API under /api/v1/: every app's routes, token login, the OpenAPI schema and its docs.

Each app keeps a router in `<app>/api/urls.py`; its registry is merged into one router here, so
/api/v1/ lists every collection. Register a new app's router in `APP_ROUTERS`.
"""

from typing import Any

from django.http import HttpResponse
from django.template import engines
from django.urls import include, path
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.authtoken.views import obtain_auth_token
from rest_framework.request import Request
from rest_framework.routers import DefaultRouter

from alerts.api.urls import router as alerts_router
from devices.api.urls import router as devices_router
from ota.api.views import router as ota_router
from rules.api.urls import router as rules_router

APP_ROUTERS = [devices_router, rules_router, alerts_router, ota_router]


class ApiRouter(DefaultRouter):
    # Device keys may contain '.', so 'devices/a.json/' must not read as a format suffix;
    # ask for a format with ?format=json instead.
    include_format_suffixes = False


router = ApiRouter()
for app_router in APP_ROUTERS:
    router.registry.extend(app_router.registry)


# spectacular's ReDoc page also loads Google Fonts; this one uses local files only.
_REDOC_PAGE = engines["django"].from_string(
    '{% extends "drf_spectacular/redoc.html" %}{% block head %}'
    '<title>{{ title|default:"ReDoc" }}</title><meta charset="utf-8">'
    '<meta name="viewport" content="width=device-width, initial-scale=1">'
    "<style>body { margin: 0; padding: 0; }</style>{% endblock head %}"
)


class RedocView(SpectacularRedocView):
    @extend_schema(exclude=True)
    def get(self, request: Request, *args: Any, **kwargs: Any) -> HttpResponse:
        data = super().get(request, *args, **kwargs).data
        return HttpResponse(_REDOC_PAGE.render(data, request))


urlpatterns = [
    path("", include(router.urls)),
    path("", include("telemetry.api.urls")),
    path("auth/token/", obtain_auth_token, name="api-token"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("redoc/", RedocView.as_view(url_name="api-schema"), name="api-redoc"),
]
