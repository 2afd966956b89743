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

Live evaluation keeps the states in `RuleState` (loaded and upserted once per batch) and the window
statistics in `DeviceWindows` (one binary row per device, shared by the rules using a term), and
turns the core's output into alerts.services calls; the back-test keeps them in memory and only
counts.
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
# The running statistics of one window term on one device (DeviceWindows.stats, a row of 7
# floats per term): last reading time, last value, weighted mean (or smoothed rate), weighted sum
# of squared deviations, readings seen, the term's last output, weight sum.
T, X, M, V, N, OUT, W = range(7)
EMPTY_WINDOW = (NAN, NAN, NAN, NAN, 0.0, NAN, 0.0)
WIDTH = len(EMPTY_WINDOW)
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
    # term key -> EMPTY_WINDOW-like row: the back-test's; live evaluation uses DeviceWindows
    windows: dict[str, list[float]] = field(default_factory=dict)
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


def last_present(x: np.ndarray) -> np.ndarray:
    """For each row, the index of the last row at or before it where `x` is known (-1: none)."""
    index = np.where(np.isnan(x), -1, np.arange(len(x)))
    return np.maximum.accumulate(index) if len(x) else index


def carry_forward(
    x: np.ndarray,
    seg: np.ndarray,
    starts: np.ndarray,
    initial: np.ndarray,
    last: np.ndarray | None = None,
) -> np.ndarray:
    """Each row's value, else the device's last earlier value in the rows, else `initial`.
    `last`: last_present(x), when the caller has it."""
    if last is None:
        last = last_present(x)
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
    """A window term's value at every row, its statistics kept in each device's DeviceState
    (the back-test's way; live evaluation keeps them in DeviceWindows: advance_term)."""
    key = term.key
    stats = np.array([s.windows.get(key, EMPTY_WINDOW) for s in states], dtype=np.float64).reshape(
        len(states), WIDTH
    )
    column = advance_term(term, x, ts, seg, starts, stats)
    for s, row in zip(states, stats.tolist(), strict=True):
        s.windows[key] = row
    return column


def advance_term(
    term: Any, x: np.ndarray, ts: np.ndarray, seg: np.ndarray, starts: np.ndarray, stats: np.ndarray
) -> np.ndarray:
    """A window term's value at every row: advanced at the rows carrying its metric (per device
    in time order, vectorised over devices), carried forward at the others. `stats`: one row of
    statistics per device of the rows (in their order), advanced in place."""
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
    return carry_forward(out, seg, starts, before)


def evaluate_rows(
    rule: CompiledRule,
    dev: np.ndarray,
    ts: np.ndarray,
    raw: Mapping[str, np.ndarray],
    states: dict[int, DeviceState],
    keep_all: bool = True,
    terms: Mapping[str, np.ndarray] | None = None,
    selection: Selection | None = None,
) -> Evaluation:
    """Evaluate `rule` over rows sorted by (device, time): `raw[name]` is the metric's value at
    each row (NaN where the row does not carry it). Rows at or before a device's `last_time` are
    late and skipped. Updates `states` and returns what happened. With `keep_all` False (live
    evaluation) a state is created only for a device that breaks: the others have nothing worth
    remembering. `terms`: the window terms' columns, computed by the caller (live evaluation
    shares them between the rules that use the same term); else computed here, their statistics
    kept in each device's state. `selection`: these rows' segments and carry indices, shared by
    the rules reading the same metrics of the same devices (live evaluation)."""
    result = Evaluation()
    if not len(ts):
        return result
    starts, seg = (selection.starts, selection.seg) if selection else segments(dev)
    ids = dev[starts]
    # Position (in `ids`) -> state, for the devices that have one: in live evaluation a few
    # among thousands, so everything below costs per state, not per device.
    known = _known(ids, states)
    last = np.full(len(ids), -1, dtype=np.int64)
    for i, s in known.items():
        if s.last_time is not None:
            last[i] = s.last_time
    fresh = ts > last[seg]
    if not fresh.all():
        selection = None  # other rows: the shared segments and indices do not fit
        dev, ts = dev[fresh], ts[fresh]
        raw = {name: x[fresh] for name, x in raw.items()}
        if terms is not None:
            terms = {key: column[fresh] for key, column in terms.items()}
        if not len(ts):
            return result
        starts, seg = segments(dev)
        ids = dev[starts]
        known = _known(ids, states)
    expression = rule.expression
    if keep_all or (expression.terms and terms is None):
        known = {i: states.setdefault(d, DeviceState()) for i, d in enumerate(ids.tolist())}
    columns: dict[str, np.ndarray] = {}
    for name, x in raw.items():
        initial = np.full(len(ids), NAN)
        for i, s in known.items():
            if name in s.values:
                initial[i] = s.values[name][1]
        lasts = selection.last(name) if selection else None
        columns[name] = carry_forward(x, seg, starts, initial, lasts)
    if expression.terms:
        ordered = [known[i] for i in range(len(ids))] if terms is None else []
        for term in expression.terms:
            if terms is not None:
                columns[term.key] = terms[term.key]
            else:
                columns[term.key] = window_column(term, raw[term.metric], ts, seg, starts, ordered)
    result.columns = columns
    breaking = np.asarray(expression.evaluate(columns), dtype=bool)
    counts = np.add.reduceat(breaking.astype(np.int64), starts)
    ends = np.r_[starts[1:], len(ts)]
    busy = np.zeros(len(ids), dtype=bool)
    busy[[i for i, s in known.items() if not s.idle]] = True
    for i in np.flatnonzero((counts > 0) | busy).tolist():
        device_id = int(ids[i])
        s = known.get(i)
        if s is None:
            s = known[i] = states.setdefault(device_id, DeviceState())
        a, b = int(starts[i]), int(ends[i])
        run_machine(rule, s, device_id, ts[a:b].tolist(), breaking[a:b].tolist(), a, result)
        result.breaking[device_id] += int(counts[i])
    # What the next rows need: each metric's last value and the last time seen.
    kept = sorted(known)
    result.devices = ids[kept].tolist()
    if not kept:
        return result
    last_rows = (ends - 1)[kept]
    kept_starts = starts[kept].tolist()
    for name, x in raw.items():
        lasts = selection.last(name) if selection else last_present(x)
        latest = lasts[last_rows].tolist()
        for i, row, start in zip(kept, latest, kept_starts, strict=True):
            if row >= start:
                known[i].values[name] = [int(ts[row]), float(x[row])]
    for i, t in zip(kept, ts[last_rows].tolist(), strict=True):
        known[i].last_time = t
    return result


def _known(ids: np.ndarray, states: dict[int, DeviceState]) -> dict[int, DeviceState]:
    """Position in `ids` (sorted device ids) -> state, for the devices `states` has."""
    if not states:
        return {}
    held = np.fromiter(states, dtype=np.int64, count=len(states))
    positions = np.searchsorted(ids, held)
    found = positions < len(ids)
    found[found] = ids[positions[found]] == held[found]
    return {
        int(i): states[d]
        for i, d in zip(positions[found].tolist(), held[found].tolist(), strict=True)
    }


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

    def __init__(self, readings: Sequence[tuple[int, int, int, float]] | np.ndarray) -> None:
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
    CASE WHEN rule_id = ANY(%b::bigint[]) THEN "values"::text END
FROM rules_rulestate WHERE rule_id = ANY(%b::bigint[]) AND device_id = ANY(%b::bigint[])
"""
EPOCH_MS = "timestamptz 'epoch' + {} * interval '1 millisecond'"
UPSERT_STATES = f"""
INSERT INTO rules_rulestate AS s
    (rule_id, device_id, breaching, firing, since, clear_since, last_time, "values", updated_at)
SELECT u.r, u.d, u.b, u.f, {EPOCH_MS.format("u.s")}, {EPOCH_MS.format("u.c")},
    {EPOCH_MS.format("u.l")}, u.v::jsonb, now()
FROM unnest(%b::bigint[], %b::bigint[], %b::bool[], %b::bool[], %b::bigint[], %b::bigint[],
            %b::bigint[], %b::text[]) AS u(r, d, b, f, s, c, l, v)
ORDER BY u.r, u.d
ON CONFLICT (rule_id, device_id) DO UPDATE SET
    breaching = EXCLUDED.breaching, firing = EXCLUDED.firing, since = EXCLUDED.since,
    clear_since = EXCLUDED.clear_since, last_time = EXCLUDED.last_time,
    "values" = EXCLUDED."values", updated_at = EXCLUDED.updated_at
WHERE s.last_time IS NULL OR EXCLUDED.last_time IS NULL OR s.last_time <= EXCLUDED.last_time
"""  # noqa: S608 (constant fragments)
UPDATE_STATES = f"""
UPDATE rules_rulestate s SET
    breaching = u.b, firing = u.f, since = {EPOCH_MS.format("u.s")},
    clear_since = {EPOCH_MS.format("u.c")}, last_time = {EPOCH_MS.format("u.l")},
    "values" = u.v::jsonb, updated_at = now()
FROM unnest(%b::bigint[], %b::bigint[], %b::bool[], %b::bool[], %b::bigint[], %b::bigint[],
            %b::bigint[], %b::text[]) AS u(r, d, b, f, s, c, l, v)
WHERE s.rule_id = u.r AND s.device_id = u.d
    AND (s.last_time IS NULL OR u.l IS NULL OR s.last_time <= {EPOCH_MS.format("u.l")})
"""  # noqa: S608 (constant fragments)
LOAD_WINDOWS = """
SELECT device_id, terms, stats FROM rules_devicewindows WHERE device_id = ANY(%b::bigint[])
"""
WINDOWS_STAGE = "rules_windows_stage"
CREATE_WINDOWS_STAGE = f"""
CREATE TEMP TABLE IF NOT EXISTS {WINDOWS_STAGE} (device_id bigint, terms text, stats bytea)
ON COMMIT DELETE ROWS;
DELETE FROM {WINDOWS_STAGE}
"""  # noqa: S608 (constant names)
SAVE_WINDOWS = f"""
INSERT INTO rules_devicewindows AS w (device_id, terms, stats)
SELECT device_id, terms, stats FROM {WINDOWS_STAGE} ORDER BY device_id
ON CONFLICT (device_id) DO UPDATE SET terms = EXCLUDED.terms, stats = EXCLUDED.stats
"""  # noqa: S608 (constant names)
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


RULES_FINGERPRINT = f"""
SELECT id, md5(ROW(tenant_id, device_type_id, kind, condition, metric, for_duration, hysteresis,
    group_id, tag, device_id, name, updated_at)::text)
FROM {Rule._meta.db_table} WHERE is_enabled AND device_type_id = ANY(%s) ORDER BY id
"""  # noqa: S608 (table name from the model)
METRICS_OF_TYPES = f"""
SELECT device_type_id, name, id FROM {Metric._meta.db_table}
WHERE device_type_id = ANY(%b::bigint[]) ORDER BY device_type_id, name
"""  # noqa: S608 (table name from the model)
# Device types -> (the enabled rules' fingerprint, their types' metrics, the rules compiled).
_compiled: dict[frozenset[int], tuple[list, list, list[CompiledRule]]] = {}


def _load_rules(type_ids: set[int]) -> list[CompiledRule]:
    """The enabled rules of these device types, compiled. A batch asks only what the rules and
    their types' metrics are now (a fingerprint of every field evaluation reads, and the metric
    names): while those are unchanged, the rules compiled for the last batch serve again
    (loading and compiling 100 rules was a tenth of a batch's evaluation)."""
    with connection.cursor() as cursor:  # the one query of a batch without rules
        cursor.execute(RULES_FINGERPRINT, [sorted(type_ids)])
        fingerprint = cursor.fetchall()
    if not fingerprint:
        return []
    with _cursor() as cursor:
        cursor.execute(METRICS_OF_TYPES, [sorted(type_ids)])
        metric_rows = cursor.fetchall()
    key = frozenset(type_ids)
    cached = _compiled.get(key)
    if cached is not None and cached[0] == fingerprint and cached[1] == metric_rows:
        return cached[2]
    rows = list(
        Rule.objects.filter(pk__in=[pk for pk, _ in fingerprint]).order_by("id").only(*RULE_FIELDS)
    )
    metrics: dict[int, dict[str, int]] = defaultdict(dict)
    for type_id, name, metric_id in metric_rows:
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
    if len(_compiled) > 1000:
        _compiled.clear()
    _compiled[key] = (fingerprint, metric_rows, compiled)
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


def _values_json(s: DeviceState, rule: CompiledRule) -> str:
    """RuleState.values as JSON text: the carried values of a rule reading several metrics (a
    single metric is never carried from the last batch)."""
    if len(rule.metrics) < 2 or not s.values:
        return "{}"
    return json.dumps({name: s.values[name] for name in rule.metrics if name in s.values})


class Selection:
    """The rows of a batch that rules reading the same metrics of the same devices evaluate,
    prepared once for all of them: 100 rules over one fleet read a handful of metric sets."""

    def __init__(self, batch: BatchRows, devices: frozenset[int], metrics: dict[str, int]):
        raw = {name: batch.column(metric_id) for name, metric_id in metrics.items()}
        present = np.zeros(batch.size, dtype=bool)
        for x in raw.values():
            present |= ~np.isnan(x)
        self.rows = np.flatnonzero(batch.in_devices(devices) & present)
        self.dev, self.ts = batch.dev[self.rows], batch.ts[self.rows]
        self.raw = {name: x[self.rows] for name, x in raw.items()}
        self.starts, self.seg = segments(self.dev)
        self._last: dict[str, np.ndarray] = {}
        self._terms: dict[str, np.ndarray] = {}

    def last(self, name: str) -> np.ndarray:
        if name not in self._last:
            self._last[name] = last_present(self.raw[name])
        return self._last[name]

    def term(self, key: str, shared: dict[str, np.ndarray]) -> np.ndarray:
        if key not in self._terms:
            self._terms[key] = shared[key][self.rows]
        return self._terms[key]


@dataclass
class Prepared:
    rule: CompiledRule
    selection: Selection


def _term_scopes(
    rules: list[CompiledRule], scopes: dict[int, frozenset[int]]
) -> dict[Any, frozenset[int]]:
    """Window term -> the batch's devices of the rules that use it. A term's statistics depend on
    the device's readings only: the rules sharing a term share them (DeviceWindows)."""
    devices: dict[Any, set[int]] = defaultdict(set)
    for rule in rules:
        if not rule.no_data and rule.windowed:
            for term in rule.expression.terms:
                devices[term].update(scopes[rule.id])
    return {term: frozenset(ids) for term, ids in devices.items()}


class Windows:
    """The window statistics of a batch's devices (DeviceWindows), kept as stored: for each
    distinct list of terms, the devices with it and their statistics as one array (devices x
    terms x WIDTH). A fleet's devices share a few such lists (the rules of their type), so
    reading and writing a thousand devices' rows is a few numpy operations, not a loop."""

    def __init__(self) -> None:
        # (term keys, device ids ascending, stats of shape (devices, terms, WIDTH))
        self.groups: list[tuple[tuple[str, ...], np.ndarray, np.ndarray]] = []

    @classmethod
    def load(cls, device_ids: list[int]) -> Windows:
        found: dict[str, tuple[list[int], list[bytes]]] = {}
        with _cursor() as cursor:
            cursor.execute(LOAD_WINDOWS, [device_ids], binary=True)
            for device_id, terms, stats in cursor:
                ids, blobs = found.setdefault(terms, ([], []))
                ids.append(device_id)
                blobs.append(stats)
        windows = cls()
        for terms, (ids, blobs) in found.items():
            keys = tuple(terms.split("\n"))
            size = len(keys) * WIDTH * 8
            fit = [i for i, blob in enumerate(blobs) if len(blob) == size]  # else start over
            if fit:
                order = sorted(fit, key=ids.__getitem__)
                stats = np.frombuffer(b"".join(blobs[i] for i in order), dtype="<f8")
                windows.groups.append(
                    (
                        keys,
                        np.array([ids[i] for i in order], dtype=np.int64),
                        stats.reshape(len(order), len(keys), WIDTH),
                    )
                )
        return windows

    def rows(self, key: str, ids: np.ndarray) -> np.ndarray:
        """The statistics of term `key` for devices `ids` (ascending): a (len(ids), WIDTH)
        array, a fresh EMPTY_WINDOW row where the device has none."""
        out = np.tile(np.array(EMPTY_WINDOW, dtype=np.float64), (len(ids), 1))
        for keys, devices, stats in self.groups:
            if key not in keys:
                continue
            where, found = _positions(devices, ids)
            out[found] = stats[where, keys.index(key)]
        return out

    def save(
        self,
        advanced: dict[str, tuple[np.ndarray, np.ndarray]],
        term_scopes: dict[Any, frozenset[int]],
    ) -> None:
        """Store the statistics of every device whose windows moved (`advanced`: term key ->
        (device ids ascending, their rows)): per device, the terms its rules use now, by
        binary COPY and one upsert."""
        if not advanced:
            return
        ids = np.unique(np.concatenate([moved for moved, _ in advanced.values()]))
        keys = sorted(term.key for term in term_scopes)
        scope_of = {term.key: devices for term, devices in term_scopes.items()}
        uses = np.stack(
            [
                np.isin(ids, np.fromiter(scope_of[key], np.int64, len(scope_of[key])))
                for key in keys
            ],
            axis=1,
        )
        with _cursor() as cursor:
            cursor.execute(CREATE_WINDOWS_STAGE)
            with cursor.copy(
                f"COPY {WINDOWS_STAGE} (device_id, terms, stats) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["int8", "text", "bytea"])
                for signature in np.unique(uses, axis=0):
                    group = ids[(uses == signature).all(axis=1)]
                    mine = [key for key, used in zip(keys, signature, strict=True) if used]
                    stats = np.empty((len(group), len(mine), WIDTH), dtype="<f8")
                    for j, key in enumerate(mine):
                        stats[:, j] = self.rows(key, group)
                        if key in advanced:
                            moved, rows = advanced[key]
                            where, found = _positions(moved, group)
                            stats[found, j] = rows[where]
                    terms = "\n".join(mine)
                    blobs = stats.reshape(len(group), -1)
                    for device_id, row in zip(group.tolist(), blobs, strict=True):
                        copy.write_row((device_id, terms, row.tobytes()))
            cursor.execute(SAVE_WINDOWS)


def _positions(devices: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of `ids` found in `devices` (both ascending): its index in `devices`, and the
    mask of `ids` found."""
    where = np.searchsorted(devices, ids)
    found = where < len(devices)
    found[found] = devices[where[found]] == ids[found]
    return where[found], found


def _shared_terms(
    rules: list[CompiledRule],
    term_scopes: dict[Any, frozenset[int]],
    batch: BatchRows,
    windows: Windows,
) -> tuple[dict[str, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Each window term's column over the whole batch, computed once from the devices' stored
    statistics; returns the columns and, per term, (device ids, their statistics advanced)."""
    metric_ids = {name: mid for rule in rules for name, mid in rule.metrics.items()}
    shared = {}
    advanced: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for term, devices in term_scopes.items():
        rows = np.flatnonzero(batch.in_devices(devices))
        column = np.full(batch.size, NAN)
        if len(rows):
            dev, ts = batch.dev[rows], batch.ts[rows]
            starts, seg = segments(dev)
            ids = dev[starts]
            stats = windows.rows(term.key, ids)
            x = batch.column(metric_ids[term.metric])[rows]
            column[rows] = advance_term(term, x, ts, seg, starts, stats)
            advanced[term.key] = (ids, stats)
        shared[term.key] = column
    return shared, advanced


def enabled_rules(type_ids: set[int]) -> list[CompiledRule]:
    """The enabled rules of these device types, compiled (cached while unchanged)."""
    return _load_rules(type_ids)


def evaluate_batch(
    readings: Sequence[tuple[int, int, int, float]] | np.ndarray,
    devices: Mapping[int, tuple[int, int]],
    rules: list[CompiledRule] | None = None,
) -> None:
    """Evaluate the enabled rules on the readings a batch has just stored.

    `readings`: (device_id, metric_id, ts_ms, value) of the rows that were new, as tuples or an
    (n, 4) float64 array (ingest passes one) (a redelivered
    batch passes only what it really stored, so nothing is evaluated twice);
    `devices`: device_id -> (tenant_id, device_type_id) for every device in `readings`;
    `rules`: enabled_rules() of their types, when the caller has them.
    Runs inside the batch's transaction (telemetry/services.py calls it in a savepoint).
    """
    if not len(readings):
        return
    if rules is None:
        rules = _load_rules({type_id for _, type_id in devices.values()})
    if not rules:
        return
    scopes = _scopes(rules, devices)
    rules = [rule for rule in rules if scopes[rule.id]]
    if not rules:
        return
    batch = BatchRows(readings)
    states = _load_states(rules, batch)
    term_scopes = _term_scopes(rules, scopes)
    windows = Windows.load(np.unique(batch.dev).tolist()) if term_scopes else Windows()
    prepared: list[Prepared] = []
    needed: dict[tuple[int, int], int] = {}
    resolved: list[tuple[CompiledRule, int, int]] = []
    selections: dict[tuple, Selection] = {}
    for rule in rules:
        key = (scopes[rule.id], tuple(sorted(rule.metrics.items())))
        selection = selections.get(key)
        if selection is None:
            selection = selections[key] = Selection(batch, scopes[rule.id], rule.metrics)
        if not len(selection.rows):
            continue
        dev, ts = selection.dev, selection.ts
        if rule.no_data:
            resolved += _heard_again(rule, dev, ts, states[rule.id])
            continue
        prepared.append(Prepared(rule, selection))
        if len(selection.raw) > 1:
            _note_needed(rule, dev, ts, selection.raw, states[rule.id], needed)
    if needed:
        _carry_from_history(prepared, needed, states)
    shared, advanced = _shared_terms(rules, term_scopes, batch, windows)
    writes: list[tuple[CompiledRule, int, DeviceState]] = []
    breaches: dict[int, list[alerts.Breach]] = defaultdict(list)
    clears: dict[int, list[tuple[int, int, datetime]]] = defaultdict(list)
    resolves: dict[int, list[tuple[int, int, datetime]]] = defaultdict(list)
    for item in prepared:
        rule, mine, selection = item.rule, states[item.rule.id], item.selection
        try:
            terms = {t.key: selection.term(t.key, shared) for t in rule.expression.terms}
            result = evaluate_rows(
                rule,
                selection.dev,
                selection.ts,
                selection.raw,
                mine,
                keep_all=False,
                terms=terms,
                selection=selection,
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
        writes += [(rule, d, mine[d]) for d in result.devices]
    for rule, device_id, t in resolved:
        resolves[0].append((rule.id, device_id, _when(t)))
        writes.append((rule, device_id, states[rule.id][device_id]))
    _save_states(writes)
    windows.save(advanced, term_scopes)
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
        for rule_id, device_id, breaching, firing, since, clear, last, values in cursor:
            states[rule_id][device_id] = DeviceState(
                breaching, firing, since, clear, last, _json(values), stored=True
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
        devices = set(np.unique(item.selection.dev).tolist())
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


def _save_states(writes: list[tuple[CompiledRule, int, DeviceState]]) -> None:
    """Upsert what must be remembered, once per batch: the states of devices breaching or
    firing; a state that went idle is deleted, so the table holds only what matters (and the
    next batch loads only that)."""
    upserts: list[tuple] = []
    updates: list[tuple] = []
    deletes: list[tuple[int, int]] = []
    for rule, device_id, s in writes:
        if s.idle:
            if s.stored:
                deletes.append((rule.id, device_id))
            continue
        (updates if s.stored else upserts).append(
            (rule.id, device_id, s.breaching, s.firing, s.since, s.clear_since, s.last_time,
             _values_json(s, rule))
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
                    ],
                )
        if breaches:
            alerts.record_breaches(breaches)
    return len(breaches)
