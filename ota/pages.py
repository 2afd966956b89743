"""What the OTA pages show, computed once for the page and its live partials: progress bars per
state and per wave, failures with their reasons, the health gate's evidence, what each action
button will do."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import Count, Q

from devices.models import Device, Role, Tenant

from . import services
from .models import (
    FAILURES,
    IN_FLIGHT,
    DeviceUpdate,
    PauseReason,
    Rollout,
    RolloutStatus,
    UpdateState,
)

# Bar order: done first, then in progress, waiting, then what went wrong.
STATE_ORDER = [
    UpdateState.SUCCEEDED,
    UpdateState.INSTALLING,
    UpdateState.DOWNLOADING,
    UpdateState.SENT,
    UpdateState.QUEUED,
    UpdateState.FAILED,
    UpdateState.TIMED_OUT,
    UpdateState.CANCELLED,
]

ACTIONS = {
    "start": "Start",
    "pause": "Pause",
    "resume": "Resume",
    "abort": "Abort",
    "retry": "Retry failed",
    "rollback": "Roll back",
}


def writable_tenant_ids(user: Any) -> list[int]:
    return list(Tenant.objects.for_user(user, role=Role.OPERATOR).values_list("pk", flat=True))


def segments(counts: dict[str, int], total: int | None = None) -> list[dict]:
    """One bar segment per state with devices: state, label, count and width in %."""
    total = total if total is not None else sum(counts.values())
    return [
        {
            "state": state.value,
            "label": state.label,
            "count": counts.get(state.value, 0),
            "width": round(100 * counts.get(state.value, 0) / total, 2) if total else 0,
        }
        for state in STATE_ORDER
        if counts.get(state.value, 0)
    ]


def duration(span: timedelta | None) -> str:
    if span is None:
        return "—"
    minutes = round(span.total_seconds() / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


# --- Lists ------------------------------------------------------------------------------------


def rollout_list(user: Any, active: bool = False) -> dict:
    rollouts = Rollout.objects.for_user(user).select_related("release", "tenant")
    if active:
        rollouts = rollouts.active()
    rollouts = list(rollouts.order_by("-created_at")[:100])
    totals = services.progress_counts(r.pk for r in rollouts)
    waves = dict(
        Rollout.objects.filter(pk__in=list(totals))
        .annotate(n=Count("waves"))
        .values_list("pk", "n")
    )
    rows = []
    for rollout in rollouts:
        counts = totals[rollout.pk]
        total = sum(counts.values())
        done = counts.get(UpdateState.SUCCEEDED, 0)
        rows.append(
            {
                "rollout": rollout,
                "total": total,
                "done": done,
                "failed": sum(counts.get(s, 0) for s in FAILURES),
                "percent": round(100 * done / total) if total else 0,
                "segments": segments(counts, total),
                "waves": waves.get(rollout.pk, 0),
            }
        )
    return {"rows": rows}


# --- The wizard's review step -----------------------------------------------------------------


def wizard_preview(form: Any) -> dict:
    """How many devices each wave would hold, from whatever of the form is valid so far."""
    form.is_valid()
    data = getattr(form, "cleaned_data", {})
    release = data.get("release")
    plan = data.get("wave_plan")
    mode = data.get("wave_mode")
    if release is None or not plan or not mode:
        return {"error": "Pick a release and give the waves to see how many devices each holds."}
    try:
        services.check_wave_plan(mode, plan)
    except ValidationError as error:
        return {"error": " ".join(error.messages)}
    target = services.Target(
        tenant=release.tenant,
        release=release,
        device_type=data.get("device_type"),
        groups=list(data.get("groups") or []),
        tags=data.get("tags") or [],
        allow_downgrade=bool(data.get("allow_downgrade")),
    )
    preview = services.preview_rollout(target, mode, plan)
    total = len(preview.eligible)
    cumulative = 0
    waves = []
    for number, size in enumerate(preview.waves, 1):
        cumulative += size
        waves.append(
            {
                "number": number,
                "size": size,
                "width": round(100 * size / total, 2) if total else 0,
                "cumulative": cumulative,
                "share": round(100 * cumulative / total) if total else 0,
            }
        )
    return {"preview": preview.as_dict(), "waves": waves, "release": release, "total": total}


# --- A rollout's page -------------------------------------------------------------------------


def rollout_page(rollout: Rollout) -> dict:
    progress = services.rollout_progress(rollout)
    total = progress["devices"]
    waves = []
    for wave in progress["waves"]:
        counts = wave["counts"]
        size = wave["size"]
        waves.append(
            {
                **wave,
                "segments": segments(counts, size),
                "succeeded": counts.get(UpdateState.SUCCEEDED, 0),
                "failed": sum(counts.get(s, 0) for s in FAILURES),
                "in_flight": sum(counts.get(s, 0) for s in IN_FLIGHT),
                "current": wave["number"] == rollout.current_wave,
                "state": _wave_state(rollout, wave),
            }
        )
    failed = (
        DeviceUpdate.objects.filter(rollout=rollout, state__in=FAILURES)
        .select_related("device")
        .order_by("-finished_at", "-pk")
    )
    return {
        "rollout": rollout,
        "progress": progress,
        "total": total,
        "segments": segments(progress["counts"], total),
        "states": [
            {
                "state": state.value,
                "label": state.label,
                "count": progress["counts"].get(state.value, 0),
                "width": round(100 * progress["counts"].get(state.value, 0) / total, 2)
                if total
                else 0,
            }
            for state in STATE_ORDER
        ],
        "waves": waves,
        "reasons": services._top_reasons(rollout, limit=8),
        "failed_devices": list(failed[:20]),
        "failed_count": failed.count(),
        "evidence": rollout.evidence if rollout.status == RolloutStatus.PAUSED else {},
        "health_measures": _measures(rollout.evidence),
        "settings": _settings(rollout),
    }


def _wave_state(rollout: Rollout, wave: dict) -> str:
    if wave["passed_at"]:
        return "passed"
    if wave["started_at"] is None:
        return "waiting"
    if wave["reached_at"] and wave["number"] == rollout.current_wave:
        return "soaking"
    return "updating"


def _measures(evidence: dict) -> list[dict]:
    measures = []
    for measure in (evidence or {}).get("measures", []):
        measures.append(
            {
                **measure,
                "updated_width": round(100 * measure["updated_share"], 1),
                "control_width": round(100 * measure["control_share"], 1),
            }
        )
    return measures


def _settings(rollout: Rollout) -> list[tuple[str, str]]:
    plan = ", ".join(
        f"{n}%" if rollout.wave_mode == "percent" else str(n) for n in rollout.wave_plan
    )
    target = []
    if rollout.device_type_id:
        target.append(f"type {rollout.device_type}")
    groups = [g.name for g in rollout.groups.all()]
    if groups:
        target.append("groups " + ", ".join(groups))
    if rollout.tags:
        target.append("tags " + ", ".join(rollout.tags))
    explicit = rollout.target_devices.count()
    if explicit:
        target.append(f"{explicit} named devices")
    window = (
        f"{rollout.window_start:%H:%M} to {rollout.window_end:%H:%M} UTC"
        if rollout.window_start and rollout.window_end
        else "any time"
    )
    return [
        (
            "Release",
            f"{rollout.release.version}" + (" (signed)" if rollout.release.signature else ""),
        ),
        ("Target", "; ".join(target) or "every device of the release's types"),
        ("Waves", plan),
        ("Soak per wave", duration(rollout.soak_time)),
        ("Success threshold", f"{rollout.success_threshold} % of a wave"),
        (
            "Failure threshold",
            f"pause above {rollout.failure_threshold} %, counted once {rollout.min_finished} "
            "finished",
        ),
        ("At most updating at once", str(rollout.max_concurrent)),
        ("Update timeout", duration(rollout.update_timeout)),
        ("Maintenance window", window),
        ("Health gate", "on" if rollout.health_gate else "off"),
        ("Downgrades", "allowed" if rollout.allow_downgrade else "refused"),
    ]


# --- Actions ----------------------------------------------------------------------------------


def available_actions(rollout: Rollout) -> list[dict]:
    status = rollout.status
    names = {
        RolloutStatus.DRAFT: ["start"],
        RolloutStatus.RUNNING: ["pause", "abort"],
        RolloutStatus.PAUSED: ["resume", "abort"],
        RolloutStatus.COMPLETED: [],
        RolloutStatus.ABORTED: [],
    }[status]
    failures = DeviceUpdate.objects.filter(rollout=rollout, state__in=FAILURES).exists()
    if failures and status != RolloutStatus.ABORTED:
        names.append("retry")
    if (
        status != RolloutStatus.DRAFT
        and DeviceUpdate.objects.filter(
            rollout=rollout, state__in=[*FAILURES, UpdateState.SUCCEEDED]
        ).exists()
    ):
        names.append("rollback")
    styles = {"start": "primary", "abort": "danger", "rollback": "danger"}
    return [{"name": n, "label": ACTIONS[n], "style": styles.get(n, "")} for n in names]


def _count(rollout: Rollout, *states: str, **filters: Any) -> int:
    return DeviceUpdate.objects.filter(rollout=rollout, state__in=states, **filters).count()


def explain(action: str, rollout: Rollout) -> list[str]:
    """What the action will do, in sentences, for the confirmation page."""
    version = rollout.release.version
    if action == "start":
        preview = services._classify(services.Target.of(rollout), rollout)
        sizes = services.plan_waves(rollout.wave_mode, rollout.wave_plan, len(preview.eligible))
        first = sizes[0] if sizes else 0
        lines = [
            f"{len(preview.eligible)} devices are queued for {version} in {len(sizes)} waves "
            f"({', '.join(str(s) for s in sizes) or 'none'}).",
            f"Wave 1's {first} devices are sent the job now: online ones only, at most "
            f"{rollout.max_concurrent} at once"
            + (
                f", between {rollout.window_start:%H:%M} and {rollout.window_end:%H:%M} UTC."
                if rollout.window_start and rollout.window_end
                else "."
            ),
            f"Each next wave starts once a wave has {rollout.success_threshold} % succeeded and "
            f"ran for {duration(rollout.soak_time)}"
            + (" and passed the health gate." if rollout.health_gate else "."),
            f"The rollout pauses itself when more than {rollout.failure_threshold} % of a wave's "
            f"finished devices fail (counted once {rollout.min_finished} finished).",
        ]
        left_out = []
        if preview.already:
            left_out.append(f"{preview.already} already run {version}")
        if preview.downgrades:
            left_out.append(f"{preview.downgrades} run a newer version (downgrades refused)")
        if preview.busy:
            left_out.append(f"{preview.busy} are updating in another rollout")
        if left_out:
            lines.append("Left out: " + "; ".join(left_out) + ".")
        return lines
    if action == "pause":
        return [
            "No new job is sent until you resume.",
            f"The {_count(rollout, *IN_FLIGHT)} devices updating right now finish their update; "
            "nothing is undone.",
        ]
    if action == "resume":
        wave = rollout.current_wave_row()
        number = wave.number if wave else rollout.current_wave
        lines = ["Jobs are sent again."]
        if rollout.pause_reason == PauseReason.FAILURE_THRESHOLD:
            failed = _count(rollout, *FAILURES, wave=number)
            lines.append(
                f"The {failed} failures of wave {number} so far are accepted; new failures count "
                "against the failure threshold again."
            )
        elif rollout.pause_reason in (PauseReason.HEALTH_GATE, PauseReason.SUCCESS_THRESHOLD):
            lines.append(
                f"You override the gate of wave {number}: "
                + (
                    "the next wave starts now."
                    if wave and wave.number < rollout.waves.count()
                    else "the rollout completes when its devices are done."
                )
            )
        return lines
    if action == "abort":
        return [
            f"The {_count(rollout, UpdateState.QUEUED)} devices not sent the job yet are "
            "cancelled.",
            f"The {_count(rollout, *IN_FLIGHT)} devices updating now finish on their own; their "
            "reports are still recorded.",
            "An aborted rollout cannot be resumed; it stays as the record of what was sent.",
        ]
    if action == "retry":
        return [
            f"The {_count(rollout, *FAILURES)} failed and timed-out devices are queued again and "
            "sent the job (each one's attempts are counted).",
        ]
    if action == "rollback":
        plan = services.rollback_plan(rollout)
        failed = _count(rollout, *FAILURES)
        updated = _count(rollout, UpdateState.SUCCEEDED)
        versions = ", ".join(f"{v} ({n})" for v, n in plan.versions.most_common()) or "unknown"
        lines = [
            f"A new rollout sends the release you pick to the {failed} devices that failed"
            f" and, if ticked, the {updated} that updated to {version}, in one wave, at once.",
            f"They ran before: {versions}.",
        ]
        if rollout.status in (RolloutStatus.RUNNING, RolloutStatus.PAUSED):
            lines.append("This rollout is aborted first.")
        return lines
    return []


@dataclass
class Done:
    message: str
    rollout_id: int


def perform(action: str, rollout: Rollout, user: Any, form: Any = None) -> Done | None:
    """Do the action; None when its form (the rollback's) is not valid."""
    if action == "start":
        services.start_rollout(rollout, user)
        return Done(f"Started: wave 1 is being sent {rollout.release.version}.", rollout.pk)
    if action == "pause":
        services.pause_rollout(rollout, user)
        return Done("Paused: no new job is sent.", rollout.pk)
    if action == "resume":
        services.resume_rollout(rollout, user)
        return Done("Resumed.", rollout.pk)
    if action == "abort":
        services.abort_rollout(rollout, user)
        return Done("Aborted: devices not sent the job were cancelled.", rollout.pk)
    if action == "retry":
        queued = services.retry_failed(rollout, None, user)
        return Done(f"{queued} devices queued again.", rollout.pk)
    if action == "rollback":
        if form is None or not form.is_valid():
            return None
        rollback = services.roll_back(
            rollout,
            user,
            release=form.cleaned_data["release"],
            include_updated=form.cleaned_data["include_updated"],
            allow_downgrade=form.cleaned_data["allow_downgrade"],
        )
        return Done(f"Rolling back: “{rollback.name}” started.", rollback.pk)
    raise ValueError(action)


# --- The device page's section ----------------------------------------------------------------


def device_firmware(device: Device) -> dict:
    updates = list(
        DeviceUpdate.objects.filter(device=device)
        .select_related("rollout__release")
        .order_by("-queued_at", "-pk")[:10]
    )
    current = next((u for u in updates if u.state in (UpdateState.QUEUED, *IN_FLIGHT)), None)
    return {
        "device": device,
        "updates": updates,
        "current": current,
        "steps": [UpdateState.SENT, UpdateState.DOWNLOADING, UpdateState.INSTALLING],
        "open_count": DeviceUpdate.objects.filter(
            Q(device=device) & Q(state__in=[UpdateState.QUEUED, *IN_FLIGHT])
        ).count(),
    }
