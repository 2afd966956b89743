"""API tokens: each member sees and manages only their own."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from rest_framework.authtoken.admin import TokenAdmin
from rest_framework.authtoken.models import Token, TokenProxy

from devices.admin.tenancy import holds_role_anywhere
from devices.models import (
    Role,
)

# --- API tokens ---------------------------------------------------------------------------------

if admin.site.is_registered(TokenProxy):
    admin.site.unregister(TokenProxy)


@admin.register(TokenProxy)
class OwnTokenAdmin(TokenAdmin):
    """API tokens: members see, create and delete only their own; superusers see everyone's.

    The token's text is its key, so log entries and messages name its user instead.
    """

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        queryset = super().get_queryset(request).select_related("user")
        return queryset if request.user.is_superuser else queryset.filter(user=request.user)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Sequence[str]:
        return ["user"] if request.user.is_superuser else []

    def has_module_permission(self, request: HttpRequest) -> bool:
        return holds_role_anywhere(request, Role.VIEWER)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._owns(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        if request.user.is_active and request.user.is_superuser:
            return True
        has_token = Token.objects.filter(user=request.user).exists()
        return holds_role_anywhere(request, Role.VIEWER) and not has_token

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a token is created or deleted, never edited

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._owns(request, obj)

    def _owns(self, request: HttpRequest, obj: Any) -> bool:
        user = request.user
        if user.is_active and user.is_superuser:
            return True
        if not holds_role_anywhere(request, Role.VIEWER):
            return False
        return obj is None or obj.user_id == user.pk

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if not request.user.is_superuser:
            obj.user = request.user
        super().save_model(request, obj, form, change)

    def response_add(
        self, request: HttpRequest, obj: Any, post_url_continue: str | None = None
    ) -> HttpResponse:
        self.message_user(request, f"Created an API token for {obj.user}.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:authtoken_tokenproxy_changelist"))

    def response_delete(self, request: HttpRequest, obj_display: str, obj_id: Any) -> HttpResponse:
        return super().response_delete(request, "API token", obj_id)

    def log_addition(self, request: HttpRequest, obj: Any, message: Any) -> None:
        _log_tokens(request, [obj], ADDITION, message)

    def log_change(self, request: HttpRequest, obj: Any, message: Any) -> None:
        _log_tokens(request, [obj], CHANGE, message)

    def log_deletions(self, request: HttpRequest, queryset: Iterable[Any]) -> None:
        _log_tokens(request, queryset, DELETION, "")


def _log_tokens(request: HttpRequest, tokens: Iterable[Any], flag: int, message: Any) -> None:
    """Admin log entries naming each token's user, never its key."""
    content_type = ContentType.objects.get_for_model(TokenProxy, for_concrete_model=False)
    if isinstance(message, list):
        message = json.dumps(message)
    LogEntry.objects.bulk_create(
        LogEntry(
            user_id=request.user.pk,
            content_type_id=content_type.pk,
            object_id=str(token.pk),
            object_repr=f"API token of {token.user}"[:200],
            action_flag=flag,
            change_message=message,
        )
        for token in tokens
    )
