"""Questions asked of alerts in bulk: how many unresolved alerts each device or rule has."""

from __future__ import annotations

from django.utils import timezone

from alerts.models import Alert, AlertKind, AlertState
from devices.models import Device
from tests.factories import make_device


def alert(device: Device, state: str = AlertState.OPEN) -> Alert:
    now = timezone.now()
    return Alert.objects.create(
        tenant=device.tenant,
        device=device,
        kind=AlertKind.RULE,
        state=state,
        title="too warm",
        first_triggered_at=now,
        last_triggered_at=now,
    )


def test_unresolved_alerts_are_counted_per_device_in_one_query(acme, django_assert_num_queries):
    busy, quiet, _calm = (make_device(acme, key) for key in ("busy", "quiet", "calm"))
    alert(busy)
    alert(busy, AlertState.ACKNOWLEDGED)
    alert(busy, AlertState.RESOLVED)
    alert(quiet, AlertState.RESOLVED)
    with django_assert_num_queries(1):
        counted = dict(
            Device.objects.annotate(n=Alert.objects.unresolved().count_per("device"))
            .order_by("key")
            .values_list("key", "n")
        )
    assert counted == {"busy": 2, "calm": 0, "quiet": 0}
