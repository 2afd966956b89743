"""Firmware releases: semantic versions, the file stored through the storage API with its sha256
computed on upload, and Ed25519 signatures verified against the tenant's registered keys."""

from __future__ import annotations

import base64
import hashlib

import pytest
from django.core.exceptions import ValidationError

from ota import services
from ota.models import FirmwareRelease
from tests.factories import make_device_type
from tests.ota.conftest import FIRMWARE, Signer, upload


def create(tenant, **overrides):
    fields = {
        "tenant": tenant,
        "version": "2.1.0",
        "file": upload(),
        "device_types": [make_device_type(tenant, "Freezer")],
        "notes": "Faster defrost",
    }
    return services.create_release(**{**fields, **overrides})


def refusal(tenant, **overrides) -> dict:
    with pytest.raises(ValidationError) as caught:
        create(tenant, **overrides)
    assert not FirmwareRelease.objects.exists()
    return caught.value.message_dict


def test_a_release_stores_its_file_and_the_sha256_computed_on_upload(acme, media):
    release = create(acme)

    assert release.sha256 == hashlib.sha256(FIRMWARE).hexdigest()
    assert release.size == len(FIRMWARE)
    assert release.file.name == "firmware/acme/2.1.0/firmware.bin"
    with release.file.open("rb") as stored:
        assert stored.read() == FIRMWARE
    assert (media / release.file.name).exists()
    assert not release.is_signed


def test_a_signed_release_verifies_with_the_tenants_key(acme, acme_key, signer):
    release = create(acme, signature=signer.sign(FIRMWARE))

    assert release.signing_key == acme_key
    assert base64.b64decode(release.signature) == base64.b64decode(signer.sign(FIRMWARE))


def test_a_file_changed_after_signing_is_refused(acme, acme_key, signer, media):
    tampered = bytearray(FIRMWARE)
    tampered[100] ^= 0xFF

    errors = refusal(acme, file=upload(bytes(tampered)), signature=signer.sign(FIRMWARE))

    assert "does not verify" in errors["signature"][0]
    assert acme_key.fingerprint in errors["signature"][0]
    assert not media.exists() or not list(media.rglob("*.bin"))


def test_a_file_whose_sha256_is_not_the_one_given_is_refused(acme):
    errors = refusal(acme, expected_sha256=hashlib.sha256(b"the real build").hexdigest())

    assert f"SHA-256 is {hashlib.sha256(FIRMWARE).hexdigest()}" in errors["sha256"][0]
    assert "Release refused" in errors["sha256"][0]


def test_the_sha256_given_may_be_upper_case(acme):
    release = create(acme, expected_sha256=hashlib.sha256(FIRMWARE).hexdigest().upper())
    assert release.sha256 == hashlib.sha256(FIRMWARE).hexdigest()


def test_a_signature_of_another_key_is_refused(acme, acme_key):
    errors = refusal(acme, signature=Signer().sign(FIRMWARE))
    assert "does not verify" in errors["signature"][0]


def test_a_tenant_with_keys_refuses_unsigned_firmware(acme, acme_key):
    errors = refusal(acme)
    assert "signs its firmware" in errors["signature"][0]


def test_a_signature_without_any_registered_key_is_refused(acme, signer):
    errors = refusal(acme, signature=signer.sign(FIRMWARE))
    assert "register the public key first" in errors["signature"][0]


def test_a_garbled_signature_says_what_to_give(acme, acme_key):
    errors = refusal(acme, signature="not a signature")
    assert "not 64 bytes in base64 or hex" in errors["signature"][0]


def test_another_tenants_key_does_not_verify_acme_firmware(acme, globex, signer):
    services.register_signing_key(globex, "Globex key", signer.public_pem)
    errors = refusal(acme, signature=signer.sign(FIRMWARE))
    assert "no active signing key" in errors["signature"][0]


def test_a_retired_key_no_longer_verifies(acme, acme_key, signer):
    acme_key.is_active = False
    acme_key.save()
    errors = refusal(acme, signature=signer.sign(FIRMWARE))
    assert "no active signing key" in errors["signature"][0]


@pytest.mark.parametrize("version", ["2.1", "v2.1.0", "latest", "2.1.0.4", ""])
def test_the_version_must_be_semantic(acme, version):
    errors = refusal(acme, version=version)
    assert "semantic version" in errors["version"][0]


def test_a_pre_release_version_is_accepted(acme):
    assert create(acme, version="2.1.0-rc.1").version == "2.1.0-rc.1"


def test_a_version_can_be_released_once_per_tenant(acme, globex):
    create(acme)
    with pytest.raises(ValidationError) as caught:
        create(acme, file=upload(b"other"))
    assert "already has a release 2.1.0" in caught.value.message_dict["version"][0]
    assert create(globex, device_types=[make_device_type(globex, "Pump")]).version == "2.1.0"


def test_a_file_over_the_size_limit_is_refused(acme, settings):
    settings.OTA_MAX_UPLOAD_BYTES = len(FIRMWARE) - 1
    errors = refusal(acme)
    assert f"the limit is {len(FIRMWARE) - 1:,} bytes" in errors["file"][0]


def test_an_empty_file_is_refused(acme):
    assert "empty" in refusal(acme, file=upload(b""))["file"][0]


def test_device_types_of_another_tenant_are_refused(acme, globex):
    errors = refusal(acme, device_types=[make_device_type(globex, "Pump")])
    assert "another tenant" in errors["device_types"][0]


@pytest.mark.parametrize("form", ["pem", "base64", "hex"])
def test_a_public_key_is_taken_as_pem_base64_or_hex(acme, signer, form):
    text = {
        "pem": signer.public_pem,
        "base64": base64.b64encode(signer.public_raw).decode(),
        "hex": signer.public_raw.hex(),
    }[form]
    key = services.register_signing_key(acme, "Key", text)
    assert base64.b64decode(key.public_key) == signer.public_raw
    assert key.fingerprint == hashlib.sha256(signer.public_raw).hexdigest()[:16]


def test_a_key_that_is_not_ed25519_is_refused(acme):
    with pytest.raises(ValidationError) as caught:
        services.register_signing_key(acme, "Key", "c2hvcnQ=")
    assert "not 32 bytes" in caught.value.message_dict["public_key"][0]


def test_the_same_key_is_registered_once(acme, acme_key, signer):
    with pytest.raises(ValidationError) as caught:
        services.register_signing_key(acme, "Again", signer.public_pem)
    assert "already has this key" in caught.value.message_dict["public_key"][0]


def test_deleting_a_release_removes_its_file(acme, media, django_capture_on_commit_callbacks):
    release = create(acme)
    path = media / release.file.name
    with django_capture_on_commit_callbacks(execute=True):
        services.delete_release(release)
    assert not path.exists()
