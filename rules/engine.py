"""Rule evaluation: on every stored batch (`evaluate_batch`), for silent devices
(`check_no_data`) and over stored history (rules/backtest.py), all through one core,
`evaluate_rows`.

The core takes the rows of one rule — one row per device and reading time that carries a metric
the condition reads, sorted by (device, time) — and per device a `DeviceState`: what evaluation
remembers between batches. It
1. carries each metric's last known value forward (within the rows, then from the state),
2. computes the condition's window terms (avg, stddev, zscore, rate, delta: exponentially weighted
   with the window as time constant), advancing their running statistics,
3. evaluates the condition once over all rows of all devices (numpy, rules/expressions.py),
4. runs the state machine (breaching since, firing, clear since, hysteresis) only for the devices
   that broke or were already breaching or firing: a quiet device costs nothing per row.

Live evaluation keeps the states in `RuleState` (loaded and upserted once per batch) and turns the
core's output into alerts.services calls; the back-test keeps them in memory and only counts.
Times are device time (reading timestamps), in epoch milliseconds inside this module.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce

from alerts import services as alerts
from devices.models import Device, DeviceStatus, Metric
from rules.models import Rule, RuleKind, RuleState
from telemetry.models import LatestReading

log = logging.getLogger(__name__)

NAN = math.nan
MINUTE_MS = 60_000
# A metric's value is carried forward from history for at most this long before the row that
# needs it (a message carrying only some of a compound rule's metrics).
CARRY_LOOKBACK = timedelta(days=1)
# The running statistics of one window term on one device, stored as a list in
# RuleState.windows[term key]: last reading time, last value, weighted mean (or smoothed rate),
# weighted sum of squared deviations, readings seen, the term's last output, weight sum.
T, X, M, V, N, OUT, W = range(7)
EMPTY_WINDOW = (NAN, NAN, NAN, NAN, 0.0, NAN, 0.0)
ZSCORE_MIN_HISTORY = 10


# --- rules, compiled --------------------------------------------------------------------------
@dataclass
class CompiledRule:
    """What evaluation needs of a rule: its scope, its timings and its parsed condition."""

    id: int | None
    tenant_id: int
    kind: str
    device_type_id: int
    group_id: int | None
    tag: str
    device_id: int | None
    for_ms: int
    hysteresis_ms: int
    expression: Any  # rules.expressions.Expression; None for no-data rules
    metrics: dict[str, int]  # name -> metric id of what it reads (no-data: what it watches)

    @property
    def windowed(self) -> bool:
        return bool(self.expression is not None and self.expression.terms)

    @property
    def no_data(self) -> bool:
        return self.kind == RuleKind.NO_DATA


_expressions: dict[tuple[int, datetime, frozenset[str]], Any] = {}


def _ms(delta: timedelta | None) -> int:
    return int(delta.total_seconds() * 1000) if delta else 0


def compile_rule(rule: Rule, metrics: Mapping[str, int]) -> CompiledRule:
    """Parse the rule's condition against its type's metrics (`name -> metric id`); raises
    rules.expressions.ExpressionError when it no longer parses. Saved rules' expressions are
    cached per (rule, updated_at, the type's metric names)."""
    from rules.expressions import parse  # the engine must import even while the language is off

    expression = None
    if rule.kind == RuleKind.NO_DATA:
        if rule.metric:
            if rule.metric not in metrics:
                from rules.expressions import ExpressionError

                raise ExpressionError(f"the device type has no metric {rule.metric!r}", 0)
            reads = {rule.metric: metrics[rule.metric]}
        else:
            reads = dict(metrics)
    else:
        names = frozenset(metrics)
        key = (rule.pk, rule.updated_at, names) if rule.pk and rule.updated_at else None
        expression = _expressions.get(key) if key else None
        if expression is None:
            expression = parse(rule.condition, names)
            if key:
                if len(_expressions) > 10_000:
                    _expressions.clear()
                _expressions[key] = expression
        reads = {name: metrics[name] for name in sorted(expression.metrics)}
    return CompiledRule(
        id=rule.pk,
        tenant_id=rule.tenant_id,
        kind=rule.kind,
        device_type_id=rule.device_type_id,
        group_id=rule.group_id,
        tag=rule.tag,
        device_id=rule.device_id,
        for_ms=_ms(rule.for_duration),
        hysteresis_ms=_ms(rule.hysteresis),
        expression=expression,
        metrics=reads,
    )


def devices_in_scope(rule: Rule) -> QuerySet[Device]:
    """The devices a rule applies to: its tenant's devices of its type, narrowed to its group,
    tag or device."""
    devices = Device.objects.filter(tenant_id=rule.tenant_id, device_type_id=rule.device_type_id)
    if rule.group_id:
        devices = devices.filter(groups=rule.group_id)
    if rule.tag:
        devices = devices.with_tag(rule.tag)
    if rule.device_id:
        devices = devices.filter(pk=rule.device_id)
    return devices


# --- the core -----------------------------------------------------------------------------------
@dataclass
class DeviceState:
    """RuleState in memory (times in epoch ms)."""

    breaching: bool = False
    firing: bool = False
    since: int | None = None
    clear_since: int | None = None
    last_time: int | None = None
    values: dict[str, list[float]] = field(default_factory=dict)  # name -> [ts_ms, value]
    windows: dict[str, list[float]] = field(default_factory=dict)  # term key -> EMPTY_WINDOW
    stored: bool = False  # a RuleState row exists

    @property
    def idle(self) -> bool:
        return not (self.breaching or self.firing)


@dataclass
class BreachRun:
    """Breaking rows of one device while its alert is firing, within one round."""

    device_id: int
    first_at: int
    last_at: int
    count: int
    row: int  # the last breaking row, whose values the alert shows


@dataclass
class Evaluation:
    """What the core found. Rounds order what happened within one call: a device whose alert
    resolved and broke again in the same rows opens its second alert in the next round."""

    breaches: dict[int, list[BreachRun]] = field(default_factory=lambda: defaultdict(list))
    clears: dict[int, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))
    resolves: dict[int, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))
    openings: list[tuple[int, int]] = field(default_factory=list)  # (device, ms) alert opened
    breaking: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    devices: list[int] = field(default_factory=list)  # devices evaluated
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def rounds(self) -> list[int]:
        return sorted({*self.breaches, *self.clears, *self.resolves})


def segments(dev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start index of each device's rows (rows sorted by device) and each row's device index."""
    n = len(dev)
    starts = np.flatnonzero(np.r_[True, dev[1:] != dev[:-1]]) if n else np.zeros(0, np.int64)
    seg = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
    return starts, seg


def carry_forward(
    x: np.ndarray, seg: np.ndarray, starts: np.ndarray, initial: np.ndarray
) -> np.ndarray:
    """Each row's value, else the device's last earlier value in the rows, else `initial`."""
    index = np.where(np.isnan(x), -1, np.arange(len(x)))
    last = np.maximum.accumulate(index) if len(x) else index
    own = last >= starts[seg]
    return np.where(own, x[np.maximum(last, 0)], initial[seg])


def advance_window(
    function: str, tau_ms: float | None, state: np.ndarray, x: np.ndarray, t: np.ndarray
) -> np.ndarray:
    """One reading per device (rows of `state`, shape (k, 7)) through a window term; updates
    `state` in place and returns the term's value at these readings.

    Exponentially weighted with the window as time constant: a reading `age` old weighs
    exp(-age / window). Mean and variance are the weighted ones over all readings so far
    (West's incremental form with the weight sum W), so they are right from the first readings on
    instead of creeping up from zero."""
    first = np.isnan(state[:, T])
    dt = t - state[:, T]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        decay = np.where(first, 0.0, np.exp(-dt / tau_ms)) if tau_ms else np.zeros(len(x))
        weight = np.where(np.isnan(state[:, W]), 0.0, state[:, W])
        seen = state[:, N]
        if function in ("avg", "stddev", "zscore"):
            mean = np.where(first, x, state[:, M])
            squares = np.where(first, 0.0, state[:, V])
            diff = x - mean
            if function == "zscore":
                spread = np.sqrt(squares / weight)
                ok = (seen >= ZSCORE_MIN_HISTORY) & (spread > 0)
                out = np.where(ok, diff / spread, NAN)
            weight = decay * weight + 1.0
            mean = mean + diff / weight
            squares = decay * squares + diff * (x - mean)
            state[:, M], state[:, V], state[:, W] = mean, squares, weight
            if function == "avg":
                out = mean
            elif function == "stddev":
                out = np.sqrt(np.maximum(squares, 0.0) / weight)
        elif function in ("rate", "delta"):
            change = np.where(first, NAN, x - state[:, X])
            if function == "delta":
                out = change
            else:
                per_minute = change / (dt / MINUTE_MS)
                if tau_ms:
                    # A weighted mean of the per-minute rates between readings.
                    known = ~np.isnan(per_minute)
                    smoothed = np.where(np.isnan(state[:, M]), 0.0, state[:, M])
                    weight = np.where(known, decay * weight + 1.0, weight)
                    smoothed = np.where(known, smoothed + (per_minute - smoothed) / weight, NAN)
                    state[:, M] = np.where(known, smoothed, state[:, M])
                    state[:, W] = weight
                    out = state[:, M].copy()
                else:
                    out = per_minute
        else:
            raise ValueError(f"unknown window function {function!r}")
    state[:, T], state[:, X], state[:, N], state[:, OUT] = t, x, seen + 1, out
    return out


def window_column(
    term: Any, x: np.ndarray, ts: np.ndarray, seg: np.ndarray, starts: np.ndarray, states: list
) -> np.ndarray:
    """A window term's value at every row: advanced at the rows carrying its metric (per device
    in time order, vectorised over devices), carried forward at the others."""
    key = term.key
    stats = np.array(
        [[NAN if v is None else v for v in s.windows.get(key, EMPTY_WINDOW)] for s in states],
        dtype=np.float64,
    ).reshape(len(states), len(EMPTY_WINDOW))
    before = stats[:, OUT].copy()
    out = np.full(len(x), NAN)
    present = np.flatnonzero(~np.isnan(x))
    # Readings at or before the term's last one (late arrivals) do not move it back.
    present = present[ts[present] > np.nan_to_num(stats[seg[present], T], nan=-np.inf)]
    if len(present):
        pseg = seg[present]
        firsts = np.flatnonzero(np.r_[True, pseg[1:] != pseg[:-1]])
        rank = np.arange(len(present)) - np.repeat(firsts, np.diff(np.r_[firsts, len(present)]))
        order = np.argsort(rank, kind="stable")
        bounds = np.searchsorted(rank[order], np.arange(rank.max() + 2))
        tau = term.window * 1000 if term.window else None
        for k in range(len(bounds) - 1):
            rows = present[order[bounds[k] : bounds[k + 1]]]
            devices = seg[rows]
            block = stats[devices]
            out[rows] = advance_window(term.function, tau, block, x[rows], ts[rows])
            stats[devices] = block
        for s, row in zip(states, stats.tolist(), strict=True):
            s.windows[key] = row
    return carry_forward(out, seg, starts, before)


def evaluate_rows(
    rule: CompiledRule,
    dev: np.ndarray,
    ts: np.ndarray,
    raw: Mapping[str, np.ndarray],
    states: dict[int, DeviceState],
    keep_all: bool = True,
    terms: Mapping[str, np.ndarray] | None = None,
) -> Evaluation:
    """Evaluate `rule` over rows sorted by (device, time): `raw[name]` is the metric's value at
    each row (NaN where the row does not carry it). Rows at or before a device's `last_time` are
    late and skipped. Updates `states` and returns what happened. With `keep_all` False (live
    evaluation) a state is created only for a device that breaks: the others have nothing worth
    remembering. `terms`: the window terms' columns, computed by the caller (live evaluation
    shares them between the rules that use the same term); else computed here, their statistics
    kept in each device's state."""
    result = Evaluation()
    if not len(ts):
        return result
    starts, seg = segments(dev)
    ids = dev[starts].tolist()
    known = [states.get(d) for d in ids] if states else [None] * len(ids)
    held = [i for i, s in enumerate(known) if s is not None]  # few, in live evaluation
    last = np.full(len(ids), -1, dtype=np.int64)
    for i in held:
        if known[i].last_time is not None:
            last[i] = known[i].last_time
    fresh = ts > last[seg]
    if not fresh.all():
        dev, ts = dev[fresh], ts[fresh]
        raw = {name: x[fresh] for name, x in raw.items()}
        if terms is not None:
            terms = {key: column[fresh] for key, column in terms.items()}
        if not len(ts):
            return result
        starts, seg = segments(dev)
        ids = dev[starts].tolist()
        known = [states.get(d) for d in ids]
    expression = rule.expression
    if keep_all or (expression.terms and terms is None):
        known = [s if s is not None else states.setdefault(d, DeviceState()) for s, d in
                 zip(known, ids, strict=True)]  # fmt: skip
    held = [i for i, s in enumerate(known) if s is not None]
    columns: dict[str, np.ndarray] = {}
    for name, x in raw.items():
        initial = np.full(len(ids), NAN)
        for i in held:
            if name in known[i].values:
                initial[i] = known[i].values[name][1]
        columns[name] = carry_forward(x, seg, starts, initial)
    for term in expression.terms:
        if terms is not None:
            columns[term.key] = terms[term.key]
        else:
            columns[term.key] = window_column(term, raw[term.metric], ts, seg, starts, known)
    result.columns = columns
    breaking = np.asarray(expression.evaluate(columns), dtype=bool)
    counts = np.add.reduceat(breaking.astype(np.int64), starts)
    ends = np.r_[starts[1:], len(ts)]
    busy = np.zeros(len(ids), dtype=bool)
    busy[[i for i in held if not known[i].idle]] = True
    for i in np.flatnonzero((counts > 0) | busy).tolist():
        if known[i] is None:
            known[i] = states.setdefault(ids[i], DeviceState())
        a, b = int(starts[i]), int(ends[i])
        run_machine(rule, known[i], ids[i], ts[a:b].tolist(), breaking[a:b].tolist(), a, result)
        result.breaking[ids[i]] += int(counts[i])
    # What the next rows need: each metric's last value and the last time seen.
    kept = [i for i, s in enumerate(known) if s is not None]
    result.devices = [ids[i] for i in kept]
    if not kept:
        return result
    last_rows = (ends - 1)[kept]
    kept_starts = starts[kept].tolist()
    for name, x in raw.items():
        index = np.where(np.isnan(x), -1, np.arange(len(x)))
        latest = np.maximum.accumulate(index)[last_rows].tolist()
        for i, row, start in zip(kept, latest, kept_starts, strict=True):
            if row >= start:
                known[i].values[name] = [int(ts[row]), float(x[row])]
    for i, t in zip(kept, ts[last_rows].tolist(), strict=True):
        known[i].last_time = t
    return result


def run_machine(
    rule: CompiledRule,
    s: DeviceState,
    device_id: int,
    times: list[int],
    breaking: list[bool],
    offset: int,
    result: Evaluation,
) -> None:
    """The state machine of one device over its rows in time order.

    Breaking rows: breaching since the first; the alert fires once the condition has held for
    the rule's duration; while firing each breaking row counts, and one cancels a pending clear
    (the flapping damper: no resolve, no new alert). Clear rows: breaching ends; a firing alert
    is clear since the first; clear for the hysteresis, it resolves."""
    round_ = 0
    run: BreachRun | None = None
    clear_new = False
    for j, (t, broke) in enumerate(zip(times, breaking, strict=True)):
        if (
            broke
            and s.firing
            and s.clear_since is not None
            and t - s.clear_since >= rule.hysteresis_ms
        ):
            # Clear for the hysteresis before this reading: the alert resolved in between (by
            # the wall clock, alerts.resolve_cleared); this breach is a new one.
            resolved = s.clear_since + rule.hysteresis_ms
            if run is not None:
                result.breaches[round_].append(run)
            result.resolves[round_].append((device_id, resolved))
            s.firing, s.clear_since, clear_new, run = False, None, False, None
            round_ += 1
        if broke:
            if not s.breaching:
                s.breaching, s.since = True, t
            if not s.firing:
                if t - (s.since if s.since is not None else t) < rule.for_ms:
                    continue
                s.firing = True
                result.openings.append((device_id, t))
            s.clear_since, clear_new = None, False
            if run is None:
                run = BreachRun(device_id, t, t, 0, offset + j)
            run.count += 1
            run.last_at, run.row = t, offset + j
            continue
        s.breaching, s.since = False, None
        if not s.firing:
            continue
        if s.clear_since is None:
            s.clear_since, clear_new = t, True
        if t - s.clear_since >= rule.hysteresis_ms:
            if run is not None:
                result.breaches[round_].append(run)
            result.resolves[round_].append((device_id, t))
            s.firing, s.clear_since, clear_new, run = False, None, False, None
            round_ += 1
    if run is not None:
        result.breaches[round_].append(run)
    if clear_new and s.clear_since is not None:
        result.clears[round_].append((device_id, s.clear_since))


# --- the batch, as rows -------------------------------------------------------------------------
class BatchRows:
    """A batch's readings as rows: one per distinct (device, time), sorted, and per metric a
    column of values (NaN where the row has none)."""

    def __init__(self, readings: Sequence[tuple[int, int, int, float]]) -> None:
        table = np.asarray(readings, dtype=np.float64).reshape(-1, 4)
        dev = table[:, 0].astype(np.int64)
        metric = table[:, 1].astype(np.int64)
        ts = table[:, 2].astype(np.int64)
        order = np.lexsort((ts, dev))
        dev, metric, ts, value = dev[order], metric[order], ts[order], table[order, 3]
        new_row = np.r_[True, (dev[1:] != dev[:-1]) | (ts[1:] != ts[:-1])]
        row_of = np.cumsum(new_row) - 1
        self.dev, self.ts = dev[new_row], ts[new_row]
        self.size = len(self.ts)
        self._reading_rows, self._metric, self._value = row_of, metric, value
        self._columns: dict[int, np.ndarray] = {}
        self._scopes: dict[tuple, np.ndarray] = {}

    def column(self, metric_id: int) -> np.ndarray:
        if metric_id not in self._columns:
            mine = self._metric == metric_id
            column = np.full(self.size, NAN)
            column[self._reading_rows[mine]] = self._value[mine]
            self._columns[metric_id] = column
        return self._columns[metric_id]

    def in_devices(self, device_ids: frozenset[int]) -> np.ndarray:
        if device_ids not in self._scopes:
            self._scopes[device_ids] = np.isin(self.dev, np.fromiter(device_ids, np.int64))
        return self._scopes[device_ids]


# --- live evaluation ----------------------------------------------------------------------------
RULE_FIELDS = (
    "id", "name", "tenant", "kind", "condition", "metric", "for_duration", "hysteresis",
    "device_type", "group", "tag", "device", "updated_at",
)  # fmt: skip

LOAD_STATES = """
SELECT rule_id, device_id, breaching, firing,
    (extract(epoch FROM since) * 1000)::bigint, (extract(epoch FROM clear_since) * 1000)::bigint,
    (extract(epoch FROM last_time) * 1000)::bigint,
    CASE WHEN rule_id = ANY(%s) THEN "values"::text END, NULLIF(windows::text, '{}')
FROM rules_rulestate WHERE rule_id = ANY(%s) AND device_id = ANY(%s)
"""
EPOCH_MS = "timestamptz 'epoch' + {} * interval '1 millisecond'"
UPSERT_STATES = f"""
INSERT INTO rules_rulestate AS s
    (rule_id, device_id, breaching, firing, since, clear_since, last_time, "values", windows,
     updated_at)
SELECT u.r, u.d, u.b, u.f, {EPOCH_MS.format("u.s")}, {EPOCH_MS.format("u.c")},
    {EPOCH_MS.format("u.l")}, u.v::jsonb, u.w::jsonb, now()
FROM unnest(%b::bigint[], %b::bigint[], %b::bool[], %b::bool[], %b::bigint[], %b::bigint[],
            %b::bigint[], %b::text[], %b::text[]) AS u(r, d, b, f, s, c, l, v, w)
ORDER BY u.r, u.d
ON CONFLICT (rule_id, device_id) DO UPDATE SET
    breaching = EXCLUDED.breaching, firing = EXCLUDED.firing, since = EXCLUDED.since,
    clear_since = EXCLUDED.clear_since, last_time = EXCLUDED.last_time,
    "values" = EXCLUDED."values", windows = EXCLUDED.windows, updated_at = EXCLUDED.updated_at
WHERE s.last_time IS NULL OR EXCLUDED.last_time IS NULL OR s.last_time <= EXCLUDED.last_time
"""  # noqa: S608 (constant fragments)
UPDATE_STATES = f"""
UPDATE rules_rulestate s SET
    breaching = u.b, firing = u.f, since = {EPOCH_MS.format("u.s")},
    clear_since = {EPOCH_MS.format("u.c")}, last_time = {EPOCH_MS.format("u.l")},
    "values" = u.v::jsonb, windows = u.w::jsonb, updated_at = now()
FROM unnest(%b::bigint[], %b::bigint[], %b::bool[], %b::bool[], %b::bigint[], %b::bigint[],
            %b::bigint[], %b::text[], %b::text[]) AS u(r, d, b, f, s, c, l, v, w)
WHERE s.rule_id = u.r AND s.device_id = u.d
    AND (s.last_time IS NULL OR u.l IS NULL OR s.last_time <= {EPOCH_MS.format("u.l")})
"""  # noqa: S608 (constant fragments)
DELETE_STATES = """
DELETE FROM rules_rulestate s USING unnest(%s::bigint[], %s::bigint[]) AS u(r, d)
WHERE s.rule_id = u.r AND s.device_id = u.d
"""
CARRIED = """
SELECT q.d, q.m, r.value FROM unnest(%s::bigint[], %s::int[], %s::bigint[]) AS q(d, m, t)
CROSS JOIN LATERAL (
    SELECT value FROM telemetry_reading
    WHERE device_id = q.d AND metric_id = q.m
        AND time < timestamptz 'epoch' + q.t * interval '1 millisecond'
        AND time >= timestamptz 'epoch' + q.t * interval '1 millisecond' - %s
    ORDER BY time DESC LIMIT 1
) r
"""


def _load_rules(type_ids: set[int]) -> list[CompiledRule]:
    rows = list(
        Rule.objects.filter(is_enabled=True, device_type_id__in=type_ids)
        .order_by("id")
        .only(*RULE_FIELDS)
    )
    if not rows:
        return []
    metrics: dict[int, dict[str, int]] = defaultdict(dict)
    for type_id, name, metric_id in Metric.objects.filter(
        device_type_id__in={rule.device_type_id for rule in rows}
    ).values_list("device_type_id", "name", "id"):
        metrics[type_id][name] = metric_id
    compiled = []
    for rule in rows:
        try:
            compiled.append(compile_rule(rule, metrics[rule.device_type_id]))
        except ValueError as error:  # ExpressionError: the type lost a metric it reads
            log.warning(
                "rule %s (%r) skipped: its condition no longer parses: %s",
                rule.pk,
                rule.name,
                error,
            )
    return compiled


def _scopes(
    rules: list[CompiledRule], devices: Mapping[int, tuple[int, int]]
) -> dict[int, frozenset[int]]:
    """Rule id -> the batch's devices it applies to (group and tag memberships are read only
    when a rule narrows by them)."""
    groups: dict[int, set[int]] = defaultdict(set)
    tags: dict[int, list[str]] = {}
    group_ids = {rule.group_id for rule in rules if rule.group_id}
    if group_ids:
        for device_id, group_id in Device.groups.through.objects.filter(
            device_id__in=list(devices), devicegroup_id__in=group_ids
        ).values_list("device_id", "devicegroup_id"):
            groups[device_id].add(group_id)
    rule_tags = sorted({rule.tag for rule in rules if rule.tag})
    if rule_tags:
        tags = dict(
            Device.objects.filter(id__in=list(devices), tags__overlap=rule_tags).values_list(
                "id", "tags"
            )
        )
    by_type: dict[tuple[int, int], list[int]] = defaultdict(list)
    for device_id, (tenant_id, type_id) in devices.items():
        by_type[(tenant_id, type_id)].append(device_id)
    scopes = {}
    for rule in rules:
        ids = by_type.get((rule.tenant_id, rule.device_type_id), [])
        if rule.device_id:
            ids = [d for d in ids if d == rule.device_id]
        elif rule.group_id:
            ids = [d for d in ids if rule.group_id in groups.get(d, ())]
        elif rule.tag:
            ids = [d for d in ids if rule.tag in tags.get(d, ())]
        scopes[rule.id] = frozenset(ids)
    return scopes


def _state_json(s: DeviceState, rule: CompiledRule) -> tuple[str, str]:
    """RuleState.values and .windows as JSON text (NaN, which JSON lacks, as null)."""
    several = len(rule.metrics) > 1  # a single metric is never carried from the last batch
    values = {name: s.values[name] for name in rule.metrics if several and name in s.values}
    windows = {key: [None if v != v else v for v in row] for key, row in s.windows.items()}
    return json.dumps(values), json.dumps(windows)


@dataclass
class Prepared:
    rule: CompiledRule
    rows: np.ndarray
    dev: np.ndarray
    ts: np.ndarray
    raw: dict[str, np.ndarray]


def _term_owners(
    rules: list[CompiledRule], scopes: dict[int, frozenset[int]]
) -> dict[Any, dict[int, int]]:
    """Window term -> device -> the rule whose state keeps the term's statistics on the device.

    The statistics of a term depend on the device's readings only, so the rules that use it
    share one copy; and one row per device keeps all of them: that of the first rule (by id)
    with window terms that applies to the device. Reading and writing a row per rule and device
    cost ten times the evaluation itself (bench/rules.py)."""
    keeper: dict[int, int] = {}
    owners: dict[Any, dict[int, int]] = {}
    for rule in sorted(rules, key=lambda r: r.id):
        if rule.no_data or not rule.windowed:
            continue
        for device_id in scopes[rule.id].difference(keeper):
            keeper[device_id] = rule.id
        for term in rule.expression.terms:
            mine = owners.setdefault(term, {})
            for device_id in scopes[rule.id].difference(mine):
                mine[device_id] = keeper[device_id]
    return owners


def _shared_terms(
    rules: list[CompiledRule],
    owners: dict[Any, dict[int, int]],
    batch: BatchRows,
    states: dict[int, dict[int, DeviceState]],
    owned: set[tuple[int, int]],
) -> dict[str, np.ndarray]:
    """Each window term's column over the whole batch, computed once, its statistics kept in the
    owner rules' states."""
    metric_ids = {name: mid for rule in rules for name, mid in rule.metrics.items()}
    shared = {}
    for term, mine in owners.items():
        rows = np.flatnonzero(batch.in_devices(frozenset(mine)))
        column = np.full(batch.size, NAN)
        if len(rows):
            dev, ts = batch.dev[rows], batch.ts[rows]
            starts, seg = segments(dev)
            keeping = []
            for device_id in dev[starts].tolist():
                owner = mine[device_id]
                owned.add((owner, device_id))
                by_owner = states[owner]
                keeping.append(
                    by_owner.get(device_id) or by_owner.setdefault(device_id, DeviceState())
                )
            x = batch.column(metric_ids[term.metric])[rows]
            column[rows] = window_column(term, x, ts, seg, starts, keeping)
        shared[term.key] = column
    return shared


def evaluate_batch(
    readings: Sequence[tuple[int, int, int, float]], devices: Mapping[int, tuple[int, int]]
) -> None:
    """Evaluate the enabled rules on the readings a batch has just stored.

    `readings`: (device_id, metric_id, ts_ms, value) of the rows that were new (a redelivered
    batch passes only what it really stored, so nothing is evaluated twice);
    `devices`: device_id -> (tenant_id, device_type_id) for every device in `readings`.
    Runs inside the batch's transaction (telemetry/services.py calls it in a savepoint).
    """
    if not readings:
        return
    rules = _load_rules({type_id for _, type_id in devices.values()})
    if not rules:
        return
    scopes = _scopes(rules, devices)
    rules = [rule for rule in rules if scopes[rule.id]]
    if not rules:
        return
    batch = BatchRows(readings)
    states = _load_states(rules, batch)
    prepared: list[Prepared] = []
    needed: dict[tuple[int, int], int] = {}
    resolved: list[tuple[CompiledRule, int, int]] = []
    for rule in rules:
        in_scope = batch.in_devices(scopes[rule.id])
        raw = {name: batch.column(metric_id) for name, metric_id in rule.metrics.items()}
        present = np.zeros(batch.size, dtype=bool)
        for x in raw.values():
            present |= ~np.isnan(x)
        rows = np.flatnonzero(in_scope & present)
        if not len(rows):
            continue
        dev, ts = batch.dev[rows], batch.ts[rows]
        if rule.no_data:
            resolved += _heard_again(rule, dev, ts, states[rule.id])
            continue
        raw = {name: x[rows] for name, x in raw.items()}
        prepared.append(Prepared(rule, rows, dev, ts, raw))
        if len(raw) > 1:
            _note_needed(rule, dev, ts, raw, states[rule.id], needed)
    if needed:
        _carry_from_history(prepared, needed, states)
    owned: set[tuple[int, int]] = set()
    shared = _shared_terms(rules, _term_owners(rules, scopes), batch, states, owned)
    writes: list[tuple[CompiledRule, int, DeviceState]] = []
    breaches: dict[int, list[alerts.Breach]] = defaultdict(list)
    clears: dict[int, list[tuple[int, int, datetime]]] = defaultdict(list)
    resolves: dict[int, list[tuple[int, int, datetime]]] = defaultdict(list)
    for item in prepared:
        rule, mine = item.rule, states[item.rule.id]
        try:
            terms = {t.key: shared[t.key][item.rows] for t in rule.expression.terms}
            result = evaluate_rows(
                rule, item.dev, item.ts, item.raw, mine, keep_all=False, terms=terms
            )
        except Exception:
            log.exception("rule %s could not be evaluated on a batch; skipped", rule.id)
            continue
        for round_, runs in result.breaches.items():
            breaches[round_] += [_breach(rule, run, result.columns) for run in runs]
        for round_, items in result.clears.items():
            clears[round_] += [(rule.id, d, _when(t)) for d, t in items]
        for round_, items in result.resolves.items():
            resolves[round_] += [(rule.id, d, _when(t)) for d, t in items]
        writes += [(rule, d, mine[d]) for d in result.devices if (rule.id, d) not in owned]
    for rule, device_id, t in resolved:
        resolves[0].append((rule.id, device_id, _when(t)))
        writes.append((rule, device_id, states[rule.id][device_id]))
    by_id = {rule.id: rule for rule in rules}
    writes += [(by_id[r], d, states[r][d]) for r, d in sorted(owned)]
    _save_states(writes, owned)
    for round_ in sorted({*breaches, *clears, *resolves}):
        if breaches.get(round_):
            alerts.record_breaches(breaches[round_])
        if clears.get(round_):
            alerts.record_clears(clears[round_])
        if resolves.get(round_):
            alerts.auto_resolve(resolves[round_])


def _when(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _cursor() -> psycopg.Cursor:
    """psycopg's own cursor on Django's connection (same transaction): it binds parameters on the
    server with its C adapters, where Django's client-side cursor quotes arrays of thousands of
    values in Python."""
    connection.ensure_connection()
    return psycopg.Cursor(connection.connection)


def _load_states(rules: list[CompiledRule], batch: BatchRows) -> dict[int, dict[int, DeviceState]]:
    states: dict[int, dict[int, DeviceState]] = {rule.id: {} for rule in rules}
    with _cursor() as cursor:
        # Carried values matter only to rules reading several metrics.
        several = [rule.id for rule in rules if len(rule.metrics) > 1]
        cursor.execute(LOAD_STATES, [several, list(states), np.unique(batch.dev).tolist()])
        for rule_id, device_id, breaching, firing, since, clear, last, values, windows in cursor:
            states[rule_id][device_id] = DeviceState(
                breaching, firing, since, clear, last, _json(values), _json(windows), stored=True
            )
    return states


def _json(value: Any) -> dict:
    # Django's connection hands jsonb over as text (it decodes JSON in its fields).
    return (json.loads(value) if isinstance(value, str) else value) or {}


def _heard_again(
    rule: CompiledRule, dev: np.ndarray, ts: np.ndarray, states: dict[int, DeviceState]
) -> list[tuple[CompiledRule, int, int]]:
    """A no-data rule firing on a device resolves at the device's first reading of its metric."""
    starts, _ = segments(dev)
    heard = []
    for device_id, t in zip(dev[starts].tolist(), ts[starts].tolist(), strict=True):
        s = states.get(device_id)
        if s is not None and s.firing:
            s.firing = s.breaching = False
            s.since = s.clear_since = None
            s.last_time = t
            heard.append((rule, device_id, t))
    return heard


def _note_needed(
    rule: CompiledRule,
    dev: np.ndarray,
    ts: np.ndarray,
    raw: dict[str, np.ndarray],
    states: dict[int, DeviceState],
    needed: dict[tuple[int, int], int],
) -> None:
    """Metrics missing at a device's first row, with no value in its state: to be looked up."""
    starts, _ = segments(dev)
    for name, x in raw.items():
        for i in np.flatnonzero(np.isnan(x[starts])).tolist():
            device_id, t = int(dev[starts[i]]), int(ts[starts[i]])
            s = states.get(device_id)
            if s is not None and name in s.values:
                continue
            key = (device_id, rule.metrics[name])
            needed[key] = min(t, needed.get(key, t))


def _carry_from_history(
    prepared: list[Prepared],
    needed: dict[tuple[int, int], int],
    states: dict[int, dict[int, DeviceState]],
) -> None:
    keys = list(needed)
    with _cursor() as cursor:
        cursor.execute(
            CARRIED,
            [[d for d, _ in keys], [m for _, m in keys], [needed[k] for k in keys], CARRY_LOOKBACK],
        )
        found = {(d, m): v for d, m, v in cursor.fetchall()}
    for item in prepared:
        mine = states[item.rule.id]
        devices = set(np.unique(item.dev).tolist())
        names = {metric_id: name for name, metric_id in item.rule.metrics.items()}
        for (device_id, metric_id), value in found.items():
            if device_id in devices and metric_id in names:
                s = mine.get(device_id) or mine.setdefault(device_id, DeviceState())
                s.values.setdefault(names[metric_id], [needed[(device_id, metric_id)] - 1, value])


def _breach(rule: CompiledRule, run: BreachRun, columns: dict[str, np.ndarray]) -> alerts.Breach:
    values = {}
    for name, column in columns.items():
        value = float(column[run.row])
        if math.isfinite(value):
            values[name] = value
    return alerts.Breach(
        rule_id=rule.id,
        device_id=run.device_id,
        tenant_id=rule.tenant_id,
        first_at=_when(run.first_at),
        last_at=_when(run.last_at),
        count=run.count,
        values=values,
    )


def _save_states(
    writes: list[tuple[CompiledRule, int, DeviceState]], owned: set[tuple[int, int]]
) -> None:
    """Upsert what must be remembered, once per batch: the states keeping window statistics, and
    of devices breaching or firing; a state that went idle and keeps nothing is deleted, so the
    table holds only what matters (and the next batch loads only that)."""
    upserts: list[tuple] = []
    updates: list[tuple] = []
    deletes: list[tuple[int, int]] = []
    for rule, device_id, s in writes:
        if s.idle and (rule.id, device_id) not in owned:
            if s.stored:
                deletes.append((rule.id, device_id))
            continue
        values, windows = _state_json(s, rule)
        (updates if s.stored else upserts).append(
            (rule.id, device_id, s.breaching, s.firing, s.since, s.clear_since, s.last_time,
             values, windows)
        )  # fmt: skip
    with _cursor() as cursor:
        # Rows known to exist are updated (a join, cheaper than INSERT .. ON CONFLICT's
        # speculative insertion per row); new ones are inserted, racing batches upserting.
        if updates:
            updates.sort()
            cursor.execute(UPDATE_STATES, [list(column) for column in zip(*updates, strict=True)])
        if upserts:
            cursor.execute(UPSERT_STATES, [list(column) for column in zip(*upserts, strict=True)])
        if deletes:
            cursor.execute(DELETE_STATES, [[r for r, _ in deletes], [d for _, d in deletes]])


# --- no data ------------------------------------------------------------------------------------
def check_no_data(now: datetime | None = None) -> int:
    """Open a no-data alert for each device in scope of an enabled no-data rule that has been
    silent (no reading of the rule's metric, or of any metric) for the rule's duration and is not
    already firing; devices that never reported count from their creation. Returns how many
    fired. Reads only the database, so it is safe across restarts."""
    now = now or datetime.now(UTC)
    breaches: list[alerts.Breach] = []
    with transaction.atomic():
        for rule in Rule.objects.filter(is_enabled=True, kind=RuleKind.NO_DATA).order_by("id"):
            latest = LatestReading.objects.filter(device=OuterRef("pk"))
            if rule.metric:
                latest = latest.filter(
                    metric__name=rule.metric, metric__device_type_id=rule.device_type_id
                )
            latest = latest.order_by("-time")
            firing = RuleState.objects.filter(rule=rule, firing=True)
            silent = (
                devices_in_scope(rule)
                .filter(is_enabled=True)
                .exclude(status=DeviceStatus.MAINTENANCE)
                .annotate(
                    heard=Coalesce(Subquery(latest.values("time")[:1]), F("created_at")),
                    last_value=Subquery(latest.values("value")[:1]),
                )
                .filter(heard__lt=now - rule.for_duration)
                .filter(~Exists(firing.filter(device=OuterRef("pk"))))
                .values_list("id", "heard", "last_value")
            )  # fmt: skip
            rows = list(silent)
            if not rows:
                continue
            for device_id, heard, value in rows:
                at = heard + rule.for_duration
                values = {rule.metric: value} if rule.metric and value is not None else {}
                breaches.append(
                    alerts.Breach(rule.id, device_id, rule.tenant_id, at, at, 1, values)
                )
            ms = [int(heard.timestamp() * 1000) for _, heard, _ in rows]
            with _cursor() as cursor:
                cursor.execute(
                    UPSERT_STATES,
                    [
                        [rule.id] * len(rows),
                        [device_id for device_id, _, _ in rows],
                        [True] * len(rows),
                        [True] * len(rows),
                        ms,
                        [None] * len(rows),
                        [None] * len(rows),
                        ["{}"] * len(rows),
                        ["{}"] * len(rows),
                    ],
                )
        if breaches:
            alerts.record_breaches(breaches)
    return len(breaches)
