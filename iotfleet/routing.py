"""Websocket routes. The live dashboards add their consumers here."""

websocket_urlpatterns: list = []
