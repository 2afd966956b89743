"""The device shadow: desired vs reported, the delta between them, and the version."""

import threading

import pytest
from django.db import connection

from devices.models import DeviceShadow, merge_state, shadow_delta
from devices.services import (
    ShadowVersionConflict,
    replace_desired,
    update_desired,
    update_reported,
)


def test_delta_holds_desired_keys_the_device_has_not_reported():
    assert shadow_delta({"interval": 30, "led": "on"}, {"interval": 60, "led": "on"}) == {
        "interval": 30
    }


def test_delta_includes_desired_keys_missing_from_reported():
    assert shadow_delta({"interval": 30}, {}) == {"interval": 30}


def test_delta_ignores_reported_keys_nobody_asked_for():
    assert shadow_delta({"interval": 30}, {"interval": 30, "uptime": 99}) == {}


def test_delta_compares_nested_objects_key_by_key():
    desired = {"wifi": {"ssid": "plant", "power": 10}, "mode": "eco"}
    reported = {"wifi": {"ssid": "plant", "power": 5}, "mode": "eco"}
    assert shadow_delta(desired, reported) == {"wifi": {"power": 10}}


def test_delta_leaves_out_a_nested_object_once_every_key_is_settled():
    assert shadow_delta({"wifi": {"ssid": "a"}}, {"wifi": {"ssid": "a", "rssi": -60}}) == {}


def test_delta_treats_a_type_change_as_a_difference():
    assert shadow_delta({"threshold": 5}, {"threshold": "5"}) == {"threshold": 5}
    assert shadow_delta({"wifi": {"ssid": "a"}}, {"wifi": "off"}) == {"wifi": {"ssid": "a"}}


def test_merge_replaces_scalars_merges_objects_and_null_removes():
    document = {"a": 1, "nested": {"x": 1, "y": 2}, "gone": True}
    merged = merge_state(document, {"a": 2, "nested": {"y": None, "z": 3}, "gone": None})
    assert merged == {"a": 2, "nested": {"x": 1, "z": 3}}
    assert document == {"a": 1, "nested": {"x": 1, "y": 2}, "gone": True}, "input untouched"


def test_new_device_has_an_empty_shadow_at_version_zero(acme_device):
    shadow = DeviceShadow.objects.get(device=acme_device)
    assert (shadow.desired, shadow.reported, shadow.delta, shadow.version) == ({}, {}, {}, 0)


def test_updating_desired_bumps_version_and_computes_delta(acme_device):
    shadow = update_desired(acme_device, {"reporting_interval": 30})
    assert shadow.version == 1
    assert shadow.delta == {"reporting_interval": 30}
    assert shadow.desired_updated_at is not None
    stored = DeviceShadow.objects.get(device=acme_device)
    assert (stored.version, stored.delta) == (1, {"reporting_interval": 30})


def test_reported_state_catching_up_clears_the_delta_and_bumps_version(acme_device):
    update_desired(acme_device, {"reporting_interval": 30})
    shadow = update_reported(acme_device, {"reporting_interval": 30, "battery": 88})
    assert shadow.version == 2
    assert shadow.delta == {}
    assert shadow.in_sync
    assert shadow.reported == {"reporting_interval": 30, "battery": 88}


def test_reported_update_that_does_not_match_keeps_the_delta(acme_device):
    update_desired(acme_device, {"reporting_interval": 30})
    shadow = update_reported(acme_device, {"reporting_interval": 60})
    assert shadow.delta == {"reporting_interval": 30}


def test_desired_update_with_stale_version_is_refused_and_changes_nothing(acme_device):
    update_desired(acme_device, {"a": 1})
    with pytest.raises(ShadowVersionConflict) as conflict:
        update_desired(acme_device, {"a": 2}, expected_version=0)
    assert conflict.value.current == 1
    stored = DeviceShadow.objects.get(device=acme_device)
    assert (stored.desired, stored.version) == ({"a": 1}, 1)


def test_desired_update_with_current_version_is_applied(acme_device):
    update_desired(acme_device, {"a": 1})
    assert update_desired(acme_device, {"a": 2}, expected_version=1).desired == {"a": 2}


def test_replacing_desired_drops_keys_not_given(acme_device):
    update_desired(acme_device, {"a": 1, "nested": {"x": 1, "y": 2}})
    shadow = replace_desired(acme_device, {"nested": {"x": 5}})
    assert shadow.desired == {"nested": {"x": 5}}
    assert shadow.version == 2


@pytest.mark.django_db(transaction=True)
def test_concurrent_desired_updates_lose_no_key_and_count_every_version(acme, acme_freezer_type):
    from tests.factories import make_device

    device = make_device(acme, "race-1", device_type=acme_freezer_type)
    errors = []

    def patch(i: int) -> None:
        try:
            update_desired(device, {f"k{i}": i})
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=patch, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    shadow = DeviceShadow.objects.get(device=device)
    assert shadow.version == 8
    assert shadow.desired == {f"k{i}": i for i in range(8)}


def test_replacing_desired_with_stale_version_is_refused_and_changes_nothing(acme_device):
    update_desired(acme_device, {"a": 1})
    with pytest.raises(ShadowVersionConflict):
        replace_desired(acme_device, {"b": 2}, expected_version=0)
    stored = DeviceShadow.objects.get(device=acme_device)
    assert (stored.desired, stored.version) == ({"a": 1}, 1)
