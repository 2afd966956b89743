"""Websocket routes. The live dashboards add their consumers here."""

from django.urls import path

from dashboards.consumers import FleetConsumer

websocket_urlpatterns: list = [
    path("ws/fleet/", FleetConsumer.as_asgi()),
]
