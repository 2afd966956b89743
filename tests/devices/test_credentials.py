"""Device credentials: a secret is shown once and only its salted hash is stored."""

from django.db import connection

from devices.credentials import hash_secret, verify_secret
from devices.models import Device
from devices.services import create_device, rotate_credentials


def test_a_hash_verifies_its_secret_and_nothing_else():
    stored = hash_secret("s3cret-token")
    assert verify_secret("s3cret-token", stored)
    assert not verify_secret("s3cret-tokeN", stored)
    assert not verify_secret("", stored)


def test_the_same_secret_hashes_differently_each_time():
    assert hash_secret("same") != hash_secret("same")


def test_a_malformed_stored_hash_never_verifies():
    assert not verify_secret("x", "")
    assert not verify_secret("x", "md5$salt$digest")
    assert not verify_secret("x", "plaintext")


def test_creating_a_device_returns_a_secret_stored_only_as_a_hash(acme, acme_freezer_type):
    created = create_device(tenant=acme, key="cold-1", name="Cold 1", device_type=acme_freezer_type)
    assert len(created.secret) >= 40
    device = Device.objects.get(key="cold-1")
    assert created.secret not in device.credential_hash
    assert verify_secret(created.secret, device.credential_hash)
    with connection.cursor() as cursor:
        cursor.execute("SELECT row_to_json(d)::text FROM devices_device d WHERE key = 'cold-1'")
        (row,) = cursor.fetchone()
    assert created.secret not in row, "the secret must not be stored anywhere in the row"


def test_rotating_credentials_invalidates_the_old_secret(acme_device):
    old_hash = acme_device.credential_hash
    rotated = rotate_credentials(acme_device)
    acme_device.refresh_from_db()
    assert acme_device.credential_hash != old_hash
    assert verify_secret(rotated.secret, acme_device.credential_hash)
    assert acme_device.credential_rotated_at is not None


def test_two_devices_never_get_the_same_secret(acme, acme_freezer_type):
    a = create_device(tenant=acme, key="a-1", name="A", device_type=acme_freezer_type)
    b = create_device(tenant=acme, key="b-1", name="B", device_type=acme_freezer_type)
    assert a.secret != b.secret
