"""Coalescing live events: what a websocket holds between two frames to the browser.

The fleet's groups may carry hundreds of events a second (every ingest batch, every alert
counted); a browser needs a few frames a second at most. `EventBuffer` merges what arrives
between two frames, event by event:

- a payload of lists (`{"devices": [...]}`, `{"alerts": [...]}`) merges item by item: items that
  are objects with an `id` or `key` replace the earlier item of the same identity (the latest state
  wins), plain values (device keys) are kept once each. Past `MAX_ITEMS` items in one frame, the
  event says `"truncated": true` with the `"count"` of items seen and carries no items: the page
  refreshes as if anything had changed, instead of reading 10,000 items;
- any other payload (`{"rollout": 3, "done": 40}`) is kept as it came, at most `MAX_KEPT` per
  event name (the latest ones; earlier ones dropped are counted in `"dropped"` of the last).

A frame is `{"events": [{"event": name, "payload": {...}}, ...]}` in the order each event name
first arrived.
"""

from __future__ import annotations

from typing import Any

MAX_ITEMS = 500
MAX_KEPT = 20


def _identity(item: Any) -> Any:
    if isinstance(item, dict):
        for name in ("id", "key"):
            if name in item:
                return (name, item[name])
        return None
    if isinstance(item, str | int | float | bool) or item is None:
        return ("value", item)
    return None


def _mergeable(payload: Any) -> bool:
    """A dict whose lists hold only identifiable items (objects with id/key, or plain values)."""
    if not isinstance(payload, dict):
        return False
    lists = [value for value in payload.values() if isinstance(value, list)]
    return bool(lists) and all(_identity(item) is not None for value in lists for item in value)


class _Merged:
    """One event name's merged payload: lists keyed by identity, other fields last-wins."""

    def __init__(self) -> None:
        self.lists: dict[str, dict[Any, Any]] = {}
        self.counts: dict[str, int] = {}
        self.fields: dict[str, Any] = {}
        self.truncated = False

    def add(self, payload: dict) -> None:
        for name, value in payload.items():
            if isinstance(value, list):
                items = self.lists.setdefault(name, {})
                self.counts[name] = self.counts.get(name, 0) + len(value)
                for item in value:
                    identity = _identity(item)
                    if identity in items or len(items) < MAX_ITEMS:
                        items[identity] = item
                    else:
                        self.truncated = True
            elif name == "truncated":
                self.truncated = self.truncated or bool(value)
            elif name == "count" and isinstance(value, int):
                self.fields["count"] = self.fields.get("count", 0) + value
            else:
                self.fields[name] = value

    def payload(self) -> dict:
        merged: dict[str, Any] = dict(self.fields)
        for name, items in self.lists.items():
            # Truncated: "anything may have changed", so the items would only be bytes.
            merged[name] = [] if self.truncated else list(items.values())
        if self.truncated:
            merged["truncated"] = True
            merged.setdefault("count", max(self.counts.values(), default=0))
        return merged


class EventBuffer:
    """Events received since the last frame, merged; `drain()` empties it into a frame."""

    def __init__(self) -> None:
        self._merged: dict[str, _Merged] = {}
        self._kept: dict[str, list[dict]] = {}
        self._dropped: dict[str, int] = {}
        self._order: list[str] = []
        self.received = 0

    def __bool__(self) -> bool:
        return bool(self._order)

    def add(self, event: str, payload: Any) -> None:
        self.received += 1
        if event not in self._merged and event not in self._kept:
            self._order.append(event)
        if _mergeable(payload) and event not in self._kept:
            self._merged.setdefault(event, _Merged()).add(payload)
            return
        if event in self._merged:  # a different shape under a name that merged so far
            self._kept[event] = [self._merged.pop(event).payload()]
        kept = self._kept.setdefault(event, [])
        kept.append(payload)
        if len(kept) > MAX_KEPT:
            del kept[0]
            self._dropped[event] = self._dropped.get(event, 0) + 1

    def drain(self) -> list[dict[str, Any]]:
        events = []
        for event in self._order:
            if event in self._merged:
                events.append({"event": event, "payload": self._merged[event].payload()})
                continue
            kept = self._kept[event]
            dropped = self._dropped.get(event, 0)
            for index, payload in enumerate(kept):
                if dropped and index == len(kept) - 1 and isinstance(payload, dict):
                    payload = {**payload, "dropped": dropped}
                events.append({"event": event, "payload": payload})
        self._merged, self._kept, self._dropped, self._order = {}, {}, {}, []
        return events
