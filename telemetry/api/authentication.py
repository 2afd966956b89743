"""Devices authenticate to the HTTP ingest endpoint with their own credentials."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from django.contrib.auth.models import AnonymousUser
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from devices.credentials import hash_secret, verify_secret
from devices.models import Device

# Compared against when the key is unknown, so a wrong key costs as long as a wrong secret.
_NO_DEVICE_HASH = hash_secret("no device has this secret")


class DeviceCredentialAuthentication(BaseAuthentication):
    """HTTP Basic with the device's key and secret: the username and password it uses for MQTT.
    `request.auth` is the Device; `request.user` stays anonymous (a device is not a user)."""

    def authenticate(self, request: Request) -> tuple[AnonymousUser, Device] | None:
        header = get_authorization_header(request).split()
        if not header or header[0].lower() != b"basic":
            return None
        if len(header) != 2:
            raise AuthenticationFailed("Send 'Authorization: Basic base64(key:secret)'.")
        try:
            key, _, secret = base64.b64decode(header[1], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthenticationFailed(
                "The Basic credentials are not base64 'key:secret'."
            ) from None
        device = (
            Device.objects.filter(key=key)
            .only("id", "key", "tenant_id", "is_enabled", "credential_hash")
            .first()
        )
        stored = device.credential_hash if device else _NO_DEVICE_HASH
        if not verify_secret(secret, stored) or device is None:
            raise AuthenticationFailed(
                "Unknown device key or wrong secret. Use the secret shown when the device was "
                "created or its credentials last rotated."
            )
        return AnonymousUser(), device

    def authenticate_header(self, request: Request) -> str:
        return 'Basic realm="iotfleet devices"'


class IsDevice(BasePermission):
    message = "This endpoint takes a device's own credentials (HTTP Basic key:secret)."

    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.auth, Device)


class DeviceCredentialScheme(OpenApiAuthenticationExtension):
    """How the API docs describe device authentication."""

    target_class = DeviceCredentialAuthentication
    name = "deviceBasic"

    def get_security_definition(self, auto_schema: Any) -> dict:
        return {
            "type": "http",
            "scheme": "basic",
            "description": "The device's key as username and its secret as password.",
        }
