"""The health gate: are the devices a wave updated doing worse than those not updated yet?

Before the next wave starts, over the soak window (from the moment the wave reached its success
threshold until now), two groups of the rollout's devices are compared:

- *updated*: the wave's devices whose install succeeded;
- *not yet updated*: devices of later waves, still queued (on the old firmware), that were alive
  at the start of the window (heard within their type's heartbeat timeout of it).

on three shares:

- gone offline: offline now, or silent past their heartbeat timeout;
- alerted: a rule alert opened on the device during the window;
- rebooted: a sequence reset (telemetry IngestEvent) during the window, not counting the
  update's own reboot (within OTA_REBOOT_GRACE of the install finishing).

The updated group is *clearly worse* on a measure when both hold:
1. its share exceeds the other's by at least OTA_HEALTH_MIN_EFFECT (10 points by default), so a
   statistically real but harmless difference does not stop a rollout; and
2. a one-sided Fisher exact test (hypergeometric tail: how likely is a split at least this
   lopsided if the firmware made no difference) gives p < OTA_HEALTH_ALPHA / 3 (Bonferroni over
   the three measures). Fisher's test is exact for the small first waves (1 % of a fleet may be a
   handful of devices) where a normal-approximation z-test is not valid.

Without a comparison group (fewer than MIN_CONTROL devices), the minimum effect alone decides.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime

from django.conf import settings
from django.db.models import F, Q

from alerts.models import Alert, AlertKind
from devices.models import Device, DeviceStatus
from telemetry.models import IngestEvent, IngestEventKind

from .models import DeviceUpdate, Rollout, RolloutWave, UpdateState

MIN_CONTROL = 5
MEASURES = (
    ("offline", "Gone offline"),
    ("alerts", "Raised a rule alert"),
    ("reboots", "Rebooted unexpectedly"),
)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_greater(x_u: int, n_u: int, x_c: int, n_c: int) -> float:
    """One-sided Fisher exact test: P(X >= x_u), X the bad devices among n_u drawn without
    replacement from n_u + n_c devices of which x_u + x_c are bad (no difference between the
    groups)."""
    total, bad = n_u + n_c, x_u + x_c
    if n_u == 0 or bad == 0:
        return 1.0
    low = max(x_u, 0, n_u - (total - bad))
    high = min(bad, n_u)
    if low > high:
        return 0.0
    denominator = _log_comb(total, n_u)
    terms = [
        _log_comb(bad, k) + _log_comb(total - bad, n_u - k) - denominator
        for k in range(low, high + 1)
    ]
    peak = max(terms)
    return min(1.0, math.exp(peak) * sum(math.exp(t - peak) for t in terms))


@dataclass
class Measure:
    key: str
    label: str
    updated: int
    updated_of: int
    control: int
    control_of: int
    p_value: float | None
    worse: bool

    @property
    def updated_share(self) -> float:
        return self.updated / self.updated_of if self.updated_of else 0.0

    @property
    def control_share(self) -> float:
        return self.control / self.control_of if self.control_of else 0.0

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "updated_share": round(self.updated_share, 4),
            "control_share": round(self.control_share, 4),
            "difference": round(self.updated_share - self.control_share, 4),
        }


def judge(key: str, label: str, x_u: int, n_u: int, x_c: int, n_c: int) -> Measure:
    min_effect = settings.OTA_HEALTH_MIN_EFFECT
    alpha = settings.OTA_HEALTH_ALPHA / len(MEASURES)
    share_u = x_u / n_u if n_u else 0.0
    if n_c < MIN_CONTROL:
        return Measure(key, label, x_u, n_u, x_c, n_c, None, n_u > 0 and share_u >= min_effect)
    share_c = x_c / n_c
    p_value = fisher_greater(x_u, n_u, x_c, n_c)
    worse = share_u - share_c >= min_effect and p_value < alpha
    return Measure(key, label, x_u, n_u, x_c, n_c, p_value, worse)


def _gone(device_ids: set[int], now: datetime) -> set[int]:
    """Those of the devices offline now or silent past their heartbeat timeout."""
    return set(
        Device.objects.filter(pk__in=device_ids)
        .exclude(status=DeviceStatus.MAINTENANCE)
        .filter(
            Q(status=DeviceStatus.OFFLINE)
            | Q(last_seen__isnull=True)
            | Q(last_seen__lt=now - F("device_type__heartbeat_timeout"))
        )
        .values_list("pk", flat=True)
    )


def check_wave(rollout: Rollout, wave: RolloutWave, now: datetime) -> dict:
    """The health verdict of `wave` at `now`, as the evidence shown to the operator."""
    start = wave.reached_at or wave.started_at or now
    updated = dict(
        DeviceUpdate.objects.filter(
            rollout=rollout, wave=wave.number, state=UpdateState.SUCCEEDED
        ).values_list("device_id", "finished_at")
    )
    control = set(
        DeviceUpdate.objects.filter(
            rollout=rollout,
            wave__gt=wave.number,
            state=UpdateState.QUEUED,
            device__last_seen__gte=start - F("device__device_type__heartbeat_timeout"),
        )
        .exclude(device__status=DeviceStatus.MAINTENANCE)
        .values_list("device_id", flat=True)
    )
    everyone = set(updated) | control
    gone = _gone(everyone, now)
    alerted = set(
        Alert.objects.filter(
            kind=AlertKind.RULE,
            device_id__in=everyone,
            first_triggered_at__gte=start,
            first_triggered_at__lte=now,
        ).values_list("device_id", flat=True)
    )
    grace = settings.OTA_REBOOT_GRACE
    resets: dict[int, list[datetime]] = defaultdict(list)
    for device_id, at in IngestEvent.objects.filter(
        kind=IngestEventKind.RESET, device_id__in=everyone, time__gte=start, time__lte=now
    ).values_list("device_id", "time"):
        resets[device_id].append(at)
    rebooted = {
        device_id
        for device_id, times in resets.items()
        if device_id in control
        or any(updated[device_id] is None or at > updated[device_id] + grace for at in times)
    }
    n_u, n_c = len(updated), len(control)
    measures = [
        judge(key, label, len(found & set(updated)), n_u, len(found & control), n_c)
        for (key, label), found in zip(MEASURES, (gone, alerted, rebooted), strict=True)
    ]
    worse = [m for m in measures if m.worse]
    return {
        "wave": wave.number,
        "window_start": start.isoformat(),
        "window_end": now.isoformat(),
        "updated": n_u,
        "control": n_c,
        "measures": [m.as_dict() for m in measures],
        "worse": bool(worse),
        "summary": summary(wave.number, worse, n_u, n_c),
        "rule": (
            f"worse = share at least {settings.OTA_HEALTH_MIN_EFFECT:.0%} higher and one-sided "
            f"Fisher p < {settings.OTA_HEALTH_ALPHA / len(MEASURES):.4f}"
        ),
    }


def summary(number: int, worse: list[Measure], n_u: int, n_c: int) -> str:
    if not worse:
        return f"Wave {number}'s {n_u} updated devices did no worse than the {n_c} not yet updated."
    parts = [
        f"{m.label.lower()}: {m.updated} of {m.updated_of} updated ({m.updated_share:.0%}) vs "
        f"{m.control} of {m.control_of} not updated ({m.control_share:.0%})"
        + (f", p = {m.p_value:.2g}" if m.p_value is not None else "")
        for m in worse
    ]
    return f"Wave {number}'s updated devices are clearly worse — " + "; ".join(parts) + "."
