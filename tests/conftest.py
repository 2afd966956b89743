"""Named tenants and users: alice operates Acme, bob views Acme, carol operates Globex."""

import pytest
from django.contrib.auth import get_user_model

from devices.models import Role, Tenant
from devices.services import add_member
from tests.factories import make_device, make_device_type, make_group


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    """A cheap password hasher: the default one costs about half a second per user created.

    Tests whose passwords a separate process must check (tests/test_processes.py) override this.
    """
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    """Uploaded files (firmware images) go to the test's own folder, not the repository's."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def acme(db):
    return Tenant.objects.create(name="Acme Cold Chain", slug="acme")


@pytest.fixture
def globex(db):
    return Tenant.objects.create(name="Globex Pumps", slug="globex")


def _member(username, tenant, role):
    user = get_user_model().objects.create_user(
        username, f"{username}@example.com", f"pw-{username}"
    )
    add_member(user, tenant, role)
    return user


@pytest.fixture
def alice(acme):
    """Operator of Acme."""
    return _member("alice", acme, Role.OPERATOR)


@pytest.fixture
def bob(acme):
    """Viewer of Acme."""
    return _member("bob", acme, Role.VIEWER)


@pytest.fixture
def carol(globex):
    """Operator of Globex."""
    return _member("carol", globex, Role.OPERATOR)


@pytest.fixture
def dave(acme):
    """Admin of Acme."""
    return _member("dave", acme, Role.ADMIN)


@pytest.fixture
def acme_freezer_type(acme):
    return make_device_type(acme, "Freezer")


@pytest.fixture
def globex_pump_type(globex):
    return make_device_type(globex, "Pump")


@pytest.fixture
def acme_device(acme, acme_freezer_type):
    return make_device(acme, "acme-freezer-1", device_type=acme_freezer_type, name="Freezer 1")


@pytest.fixture
def globex_device(globex, globex_pump_type):
    return make_device(globex, "globex-pump-1", device_type=globex_pump_type, name="Pump 1")


@pytest.fixture
def acme_group(acme):
    return make_group(acme, "Warehouse North")


@pytest.fixture
def globex_group(globex):
    return make_group(globex, "Plant A")


# Private Mosquitto and Redis servers and a process launcher, for tests of the real processes;
# Chromium for the dashboards' tests.
from tests.browser import browser_context, chromium  # noqa: E402, F401
from tests.servers import launch, mosquitto, redis_server, secured_mosquitto  # noqa: E402, F401
