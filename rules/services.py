"""Every change of a rule goes through here: checking it, saving it with its channels, deleting it.

`check_rule()` is the one place that decides whether a rule may be saved; the admin form, the API
serializer and the back-test previews all call it, so a rule refused in one is refused in all.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import transaction

from alerts.models import NotificationChannel, RuleChannel
from rules.expressions import Expression, ExpressionError, parse
from rules.models import Rule, RuleKind, RuleState

# What identifies the readings a rule looks at and what it computes from them: when one of these
# changes, the state evaluation kept for the old rule means nothing for the new one.
EVALUATION_FIELDS = (
    "kind",
    "condition",
    "metric",
    "device_type_id",
    "group_id",
    "tag",
    "device_id",
)

_COMPARISON = re.compile(r"<=|>=|==|!=|<|>")
_CONNECTIVE = re.compile(r"\b(?:and|or|not)\b")


class RuleInvalid(ValidationError):
    """A rule that may not be saved: field errors as a ValidationError, and where the condition
    went wrong, the parser's error (its position and a pointer under the source)."""

    def __init__(self, errors: dict[str, Any], expression_error: ExpressionError | None = None):
        super().__init__(errors)
        self.expression_error = expression_error

    @property
    def position(self) -> int | None:
        """0-based character offset of the problem in the condition, if the parser found one."""
        return self.expression_error.position if self.expression_error else None


def metric_names(rule: Rule) -> list[str]:
    """The metrics of the rule's device type (what a condition may name), sorted."""
    if not rule.device_type_id:
        return []
    return sorted(rule.device_type.metrics.values_list("name", flat=True))


def check_condition(rule: Rule) -> Expression | None:
    """Parse the rule's condition against its type's metrics and check that it fits the kind.

    No-data rules have no condition (what is written there is ignored); their `metric`, if given,
    must be one of the type's. Raises `RuleInvalid`; returns the parsed condition, or None for a
    no-data rule.
    """
    names = metric_names(rule)
    if rule.kind == RuleKind.NO_DATA:
        if rule.metric and rule.device_type_id and rule.metric not in names:
            raise RuleInvalid({"metric": _unknown_metric(rule, rule.metric, names)})
        return None
    if not rule.condition.strip():
        raise RuleInvalid({"condition": "Write the condition, e.g. temperature > 80."})
    if not rule.device_type_id:
        # The device type is missing, and its own error says so; nothing to check names against.
        return None
    try:
        expression = parse(rule.condition, metrics=names)
    except ExpressionError as error:
        raise RuleInvalid({"condition": str(error)}, expression_error=error) from error
    problem = _kind_mismatch(rule, expression)
    if problem:
        raise RuleInvalid({"condition": problem})
    return expression


def check_rule(rule: Rule, *, unique: bool = True) -> Expression | None:
    """Everything that must hold before `rule` is saved (or back-tested).

    Runs the model's own checks (field values, scope within the tenant, `Rule.clean()`, and with
    `unique` the name unique in the tenant; a back-test of an unsaved rule need not) and then the
    condition's (`check_condition`). Raises `RuleInvalid` with every field's errors at once;
    returns the parsed condition (None for a no-data rule).
    """
    errors: dict[str, list[str]] = {}
    try:
        rule.full_clean(
            exclude=_unset_relations(rule), validate_unique=unique, validate_constraints=unique
        )
    except ValidationError as error:
        _merge(errors, error)
    _check_scope_tenant(rule, errors)
    try:
        expression = check_condition(rule)
    except RuleInvalid as error:
        # "Write the condition" from Rule.clean() and from check_condition are the same advice.
        _merge(errors, error)
        errors = {field: list(dict.fromkeys(messages)) for field, messages in errors.items()}
        raise RuleInvalid(errors, error.expression_error) from error
    if errors:
        raise RuleInvalid(errors)
    return expression


@transaction.atomic
def save_rule(
    rule: Rule,
    channels: Sequence[NotificationChannel] | None = None,
    user: AbstractBaseUser | AnonymousUser | None = None,
) -> Rule:
    """Check and save `rule`; with `channels`, make them its notification channels in that order
    (first notified first, the next on each escalation). Channels of another tenant are refused.

    When what the rule evaluates changes (kind, condition, metric or scope), the evaluation state
    kept for it is reset, so readings seen under the old condition cannot fire the new one; an
    alert already open stays open and resolves itself once the new condition has been clear for
    the hysteresis.
    """
    check_rule(rule)
    if channels is not None:
        _check_channels(rule, channels)
    previous = (
        Rule.objects.filter(pk=rule.pk).values(*EVALUATION_FIELDS).first() if rule.pk else None
    )
    if rule.pk is None and user is not None and user.is_authenticated:
        rule.created_by = user
    rule.save()
    if previous is not None and any(
        previous[field] != getattr(rule, field) for field in EVALUATION_FIELDS
    ):
        reset_rule_state(rule)
    if channels is not None:
        set_rule_channels(rule, channels)
    return rule


def reset_rule_state(rule: Rule) -> int:
    """Forget what evaluation remembered about `rule` (since when it held, last values), keeping
    only whether its alert on each device is open. Returns the rows reset. (Window statistics
    are the devices', shared by every rule using the same term: DeviceWindows keeps them.)"""
    return RuleState.objects.filter(rule=rule).update(
        breaching=False, since=None, clear_since=None, values={}
    )


def set_rule_channels(rule: Rule, channels: Sequence[NotificationChannel]) -> None:
    """Make `channels` the rule's notification channels, in this order (position 0 first)."""
    _check_channels(rule, channels)
    wanted = [channel.pk for channel in channels]
    RuleChannel.objects.filter(rule=rule).exclude(channel_id__in=wanted).delete()
    for position, channel_id in enumerate(wanted):
        RuleChannel.objects.update_or_create(
            rule=rule, channel_id=channel_id, defaults={"position": position}
        )


@transaction.atomic
def delete_rule(rule: Rule) -> None:
    """Delete the rule, its channel list and its evaluation state. Its alerts stay, as history,
    without a rule."""
    rule.delete()


# --- Helpers ------------------------------------------------------------------------------------


def _unset_relations(rule: Rule) -> list[str]:
    # full_clean() on a rule without a tenant or type yet would fail with a bare "This field
    # cannot be null." on top of the form's own "required"; leave those to the caller's fields.
    return [name for name in ("tenant", "device_type") if getattr(rule, f"{name}_id") is None]


def _check_scope_tenant(rule: Rule, errors: dict[str, list[str]]) -> None:
    """Rule.clean() checks the type and group; the device and channels need the same care."""
    if rule.device_id and rule.tenant_id and rule.device.tenant_id != rule.tenant_id:
        errors.setdefault("device", []).append("The device belongs to another tenant.")
    if rule.tenant_id is None and "tenant" not in errors:
        errors.setdefault("tenant", []).append("Choose the tenant the rule belongs to.")
    if rule.device_type_id is None and "device_type" not in errors:
        errors.setdefault("device_type", []).append(
            "Choose the device type whose devices the rule watches."
        )


def _check_channels(rule: Rule, channels: Sequence[NotificationChannel]) -> None:
    strangers = [channel for channel in channels if channel.tenant_id != rule.tenant_id]
    if strangers:
        names = ", ".join(str(channel) for channel in strangers)
        raise RuleInvalid(
            {
                "channels": f"{names}: of another tenant. Choose notification channels of "
                f"{rule.tenant}, the tenant of this rule."
            }
        )
    ids = [channel.pk for channel in channels]
    repeated = sorted({str(c) for c in channels if ids.count(c.pk) > 1})
    if repeated:
        raise RuleInvalid({"channels": f"Each channel may appear once; repeated: {repeated[0]}."})


def _kind_mismatch(rule: Rule, expression: Expression) -> str | None:
    """Why the condition does not fit the rule's kind, or None when it does."""
    functions = expression.functions
    if rule.kind == RuleKind.THRESHOLD and expression.terms:
        used = ", ".join(sorted({term.function for term in expression.terms}))
        return (
            f"A threshold rule compares the latest values; {used}() looks at a window of "
            "readings. Choose the kind 'Rate of change', 'Statistical' or 'Compound', or "
            "compare the metric itself, e.g. temperature > 80."
        )
    if rule.kind == RuleKind.RATE and not functions & {"rate", "delta"}:
        return (
            "A rate-of-change rule needs rate() or delta(), e.g. rate(temperature) > 2 "
            "(degrees per minute) or abs(delta(pressure)) > 1.5."
        )
    if rule.kind == RuleKind.ZSCORE and "zscore" not in functions:
        return (
            "A statistical rule compares a reading with the device's own history through "
            "zscore(), e.g. abs(zscore(temperature, 1h)) > 3."
        )
    if rule.kind == RuleKind.COMPOUND:
        comparisons = len(_COMPARISON.findall(expression.source))
        if comparisons < 2 or not _CONNECTIVE.search(expression.source):
            return (
                "A compound rule combines at least two comparisons with and, or, not, e.g. "
                "temperature > 8 and door_open == 1. For a single comparison choose the kind "
                "'Threshold'."
            )
    return None


def _unknown_metric(rule: Rule, metric: str, names: list[str]) -> str:
    offered = ", ".join(names) if names else "no metrics yet"
    return f"{rule.device_type} has no metric '{metric}'. Its metrics: {offered}."


def _merge(errors: dict[str, list[str]], error: ValidationError) -> None:
    if hasattr(error, "error_dict"):
        for field, messages in error.message_dict.items():
            errors.setdefault(field, []).extend(messages)
    else:
        errors.setdefault(NON_FIELD_ERRORS, []).extend(error.messages)
