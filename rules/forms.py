"""The rule form of the admin: checked by `rules.services.check_rule`, with a back-test preview."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils.html import format_html

from devices.forms import TenantScopedModelForm
from rules.models import Rule
from rules.services import RuleInvalid, check_condition, metric_names

BACKTEST_BUTTON = "_backtest"
DEFAULT_BACKTEST_DAYS = 7

CONDITION_HELP = (
    "When the rule breaks, e.g. temperature > 80, or avg(temperature, 10m) > 60 and humidity < 20. "
    "Metric names, numbers, comparisons (< <= > >= == !=), + - * / and, or, not, and the "
    "functions abs, min, max, and over a window avg(m, 10m), stddev(m, 1h), rate(m), rate(m, 5m), "
    "delta(m), zscore(m, 1h). Not used by no-data rules."
)


class RuleForm(TenantScopedModelForm):
    """A rule as an operator edits it.

    Besides the model's checks, the condition is parsed against the metrics of the chosen device
    type and must fit the kind; a parse error shows the condition with a caret under the problem.
    Posted with the Back-test button, a valid form is not saved: `is_valid()` answers False
    (with no errors) and `ready_for_backtest` tells the admin to preview it instead.
    """

    days = forms.IntegerField(
        label="Back-test over the last",
        required=False,
        min_value=1,
        max_value=settings.RULES_BACKTEST_MAX_DAYS,
        initial=DEFAULT_BACKTEST_DAYS,
        widget=forms.NumberInput(attrs={"style": "width: 5em"}),
    )

    class Meta:
        model = Rule
        fields = [
            "tenant",
            "name",
            "description",
            "is_enabled",
            "kind",
            "severity",
            "device_type",
            "group",
            "tag",
            "device",
            "condition",
            "metric",
            "for_duration",
            "hysteresis",
            "escalate_after",
            "remind_every",
        ]
        widgets = {
            "condition": forms.Textarea(
                attrs={
                    "rows": 3,
                    "cols": 80,
                    "class": "vLargeTextField",
                    "spellcheck": "false",
                    "style": "font-family: monospace",
                }
            ),
        }
        help_texts = {"condition": CONDITION_HELP}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.backtest_requested = self.is_bound and BACKTEST_BUTTON in self.data
        self.ready_for_backtest = False
        self._hint_metrics()

    def _hint_metrics(self) -> None:
        """Under the condition, the metrics the chosen type offers (static/rules/rule_form.js
        keeps it current when another type is picked)."""
        if "condition" not in self.fields:
            return
        if self.instance.device_type_id:
            offers = format_html(
                "<strong>{} offers:</strong> {}",
                self.instance.device_type,
                ", ".join(metric_names(self.instance)) or "no metrics yet",
            )
        else:
            offers = "Choose a device type to see its metrics."
        self.fields["condition"].help_text = format_html(
            '{}<br><span class="rule-metrics">{}</span>', CONDITION_HELP, offers
        )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if not self.backtest_requested:
            # The days only matter for a back-test; a stray value must not block saving.
            self._errors.pop("days", None)
        elif cleaned.get("days") is None and "days" not in self._errors:
            cleaned["days"] = DEFAULT_BACKTEST_DAYS
        return cleaned

    def _post_clean(self) -> None:
        super()._post_clean()
        self._hint_metrics()
        # The model's checks ran (full_clean); the condition needs the type's metrics, so it is
        # checked once the type itself is known to be fine.
        if {"device_type", "condition", "kind", "metric"} & set(self._errors):
            return
        try:
            check_condition(self.instance)
        except RuleInvalid as error:
            self._add_rule_errors(error)

    def _add_rule_errors(self, error: RuleInvalid) -> None:
        parse_error = error.expression_error
        for field, messages in error.message_dict.items():
            target = field if field in self.fields else None
            for message in messages:
                if parse_error is not None and field == "condition":
                    message = format_html(
                        '{}<pre class="rule-pointer">{}</pre>', message, parse_error.pointer()
                    )
                self.add_error(target, ValidationError(message))

    def is_valid(self) -> bool:
        valid = super().is_valid()
        if valid and self.backtest_requested:
            self.ready_for_backtest = True
            return False
        return valid

    @property
    def backtest_days(self) -> int:
        return (getattr(self, "cleaned_data", None) or {}).get("days") or DEFAULT_BACKTEST_DAYS
