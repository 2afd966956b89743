"""The demo firmware `seed_demo` gives Acme's freezers (ota/demo.py): signed releases, created
once, and made again when an operator deleted one, however often that happens."""

from __future__ import annotations

from ota import services
from ota.demo import KEY_NAME, RELEASES, seed_demo_firmware
from ota.models import FirmwareRelease, SigningKey


def test_the_demo_releases_are_signed_and_made_once(acme, acme_freezer_type, media_root):
    assert seed_demo_firmware(acme, acme_freezer_type) == len(RELEASES)
    assert seed_demo_firmware(acme, acme_freezer_type) == 0
    releases = FirmwareRelease.objects.filter(tenant=acme)
    assert sorted(r.version for r in releases) == sorted(v for v, _ in RELEASES)
    assert all(r.signing_key.name == KEY_NAME for r in releases)


def test_seeding_again_after_each_deleted_release_keeps_working(
    acme, acme_freezer_type, media_root
):
    seed_demo_firmware(acme, acme_freezer_type)
    for _ in range(3):
        services.delete_release(FirmwareRelease.objects.get(tenant=acme, version="2.1.0"))
        assert seed_demo_firmware(acme, acme_freezer_type) == 1
    active = SigningKey.objects.filter(tenant=acme, is_active=True)
    assert [key.name for key in active] == [KEY_NAME]
    # Every release still names the key it was signed with.
    assert not FirmwareRelease.objects.filter(tenant=acme, signing_key__isnull=True).exists()
