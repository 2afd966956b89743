"""What a websocket holds between two frames: merged by item, bounded, in arrival order."""

from __future__ import annotations

from dashboards.coalesce import MAX_ITEMS, MAX_KEPT, EventBuffer


def test_status_changes_merge_by_device_and_the_latest_state_wins():
    buffer = EventBuffer()
    buffer.add("devices.status", {"devices": [{"key": "a", "status": "offline"}]})
    buffer.add("devices.status", {"devices": [{"key": "b", "status": "offline"}]})
    buffer.add("devices.status", {"devices": [{"key": "a", "status": "online"}]})
    assert buffer.drain() == [
        {
            "event": "devices.status",
            "payload": {
                "devices": [{"key": "a", "status": "online"}, {"key": "b", "status": "offline"}]
            },
        }
    ]
    assert not buffer


def test_device_keys_are_kept_once_and_counts_add_up():
    buffer = EventBuffer()
    for keys in (["a", "b"], ["b", "c"], ["a"]):
        buffer.add("telemetry.latest", {"devices": keys, "count": len(keys) * 3})
    [event] = buffer.drain()
    assert event["payload"] == {"devices": ["a", "b", "c"], "count": 15}


def test_alerts_merge_by_id():
    buffer = EventBuffer()
    buffer.add("alerts.counted", {"alerts": [{"id": 1, "count": 5}, {"id": 2, "count": 1}]})
    buffer.add("alerts.counted", {"alerts": [{"id": 1, "count": 9}]})
    [event] = buffer.drain()
    assert event["payload"]["alerts"] == [{"id": 1, "count": 9}, {"id": 2, "count": 1}]


def test_past_the_limit_an_event_says_truncated_and_carries_no_items():
    buffer = EventBuffer()
    for n in range(MAX_ITEMS + 50):
        buffer.add("devices.status", {"devices": [{"key": f"d{n}", "status": "online"}]})
    [event] = buffer.drain()
    assert event["payload"] == {"devices": [], "truncated": True, "count": MAX_ITEMS + 50}


def test_a_truncated_event_stays_truncated_when_merged():
    buffer = EventBuffer()
    buffer.add("telemetry.latest", {"devices": [], "count": 9000, "truncated": True})
    buffer.add("telemetry.latest", {"devices": ["a"], "count": 3})
    [event] = buffer.drain()
    assert event["payload"] == {"devices": [], "count": 9003, "truncated": True}


def test_other_payloads_are_kept_in_order_up_to_a_bound():
    buffer = EventBuffer()
    for n in range(MAX_KEPT + 5):
        buffer.add("rollouts.progress", {"rollout": 3, "done": n})
    events = buffer.drain()
    assert [e["payload"]["done"] for e in events] == list(range(5, MAX_KEPT + 5))
    assert events[-1]["payload"]["dropped"] == 5


def test_events_come_out_in_the_order_their_names_first_arrived():
    buffer = EventBuffer()
    buffer.add("alerts.changed", {"alerts": [{"id": 1}]})
    buffer.add("devices.status", {"devices": [{"key": "a"}]})
    buffer.add("alerts.changed", {"alerts": [{"id": 2}]})
    assert [e["event"] for e in buffer.drain()] == ["alerts.changed", "devices.status"]
    assert buffer.received == 3
