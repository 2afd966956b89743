"""The dashboards in a real browser (Debian's Chromium, headless, driven by Playwright) against a
real daphne process, a private Redis as the Channels layer and the test database: an operator
logs in and watches, without reloading, a device go offline and come back and its alert appear
and resolve, each within 2 s of the event; another tenant's user receives none of it.

The events are made by the real services in this process (ingest_batch with the device's last
will, then a reading), which commit and push to the tenant's group on the shared Redis; daphne's
consumer forwards them to the page. The 2 s are measured from just before the service call to
the moment the page's DOM shows the change (a MutationObserver stamps it), so a slow Playwright
poll on a loaded machine does not count against the page; setting up gets generous time.
Screenshots land in artifacts/screenshots/.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone

from devices.models import Device, DeviceStatus, Role
from devices.services import add_member
from rules.models import Rule
from telemetry.services import ingest_batch
from telemetry.validation import parse_message
from tests.browser import save_screenshot
from tests.factories import make_device, make_device_type
from tests.servers import (
    Launch,
    Redis,
    celery_worker,
    output_of,
    process_env,
    start_daphne,
)

LIVE_WITHIN = 2.0  # seconds from the event to the page showing it
SETUP_TIMEOUT_MS = 60_000  # page loads, logins, websocket connects on a loaded machine
WAIT_MS = 20_000  # how long Playwright waits for a change it then checks the timing of
PASSWORD = "a-long-test-password-42"


@pytest.fixture
def orm_next_to_playwright(monkeypatch):
    """Playwright's sync API keeps an asyncio loop running in this thread, and Django refuses
    ORM calls from a thread with a running loop unless told they are safe, which they are here
    (the loop only drives the browser). Requested before the database so it outlives its flush."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture
def fast_passwords():
    """Real password hashing: daphne, a separate process, checks the browser's login."""


@pytest.fixture
def dashboards_server(launch: Launch, redis_server: Redis, settings) -> str:
    """daphne with its Channels layer on a private Redis, which this process pushes to too."""
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [redis_server.url], "prefix": "iotfleet:channels"},
        }
    }
    settings.REDIS_URL = redis_server.url
    return start_daphne(launch, REDIS_URL=redis_server.url, LIVE_FRAME_SECONDS="0.25")


@pytest.fixture
def fleet(orm_next_to_playwright, transactional_db):
    """Acme with three online freezers (a rule on temperature), operated by alice; Globex with a
    pump, operated by carol."""
    from devices.models import Tenant

    acme = Tenant.objects.create(name="Acme Cold Chain", slug="acme")
    globex = Tenant.objects.create(name="Globex Pumps", slug="globex")
    users = {}
    for name, tenant in (("alice", acme), ("carol", globex)):
        users[name] = get_user_model().objects.create_user(name, password=PASSWORD)
        add_member(users[name], tenant, Role.OPERATOR)
    freezer = make_device_type(acme, "Freezer")
    Rule.objects.create(
        tenant=acme,
        name="Too warm",
        condition="temperature > 8",
        device_type=freezer,
        severity="critical",
    )
    for n in range(1, 4):
        make_device(acme, f"acme-freezer-{n}", device_type=freezer, name=f"Freezer {n}")
    make_device(globex, "globex-pump-1")
    Device.objects.update(status=DeviceStatus.ONLINE, last_seen=timezone.now())
    return users


def log_in(context, base: str, username: str, path: str = "/"):
    page = context.new_page()
    page.set_default_timeout(SETUP_TIMEOUT_MS)
    page.goto(f"{base}{path}")
    if "/admin/login/" in page.url:  # anonymous: sent to the login page first
        page.fill("#id_username", username)
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
    page.wait_for_url(f"{base}{path}")  # and back where they wanted to go
    instrument(page)
    return page


def instrument(page) -> None:
    """Once the page's websocket is up: a marker a reload would wipe, and a stamp of when each
    watched change first showed in the DOM."""
    page.wait_for_function("document.documentElement.dataset.live === 'connected'")
    page.evaluate(
        """() => {
        window.__noReload = true;
        window.__seen = {};
        window.__watch = {};
        const check = () => {
          for (const [name, test] of Object.entries(window.__watch)) {
            if (!(name in window.__seen)) {
              try { if (test()) { window.__seen[name] = Date.now(); } } catch (e) {}
            }
          }
        };
        new MutationObserver(check).observe(document.body,
          {subtree: true, childList: true, characterData: true, attributes: true});
      }"""
    )


def watch(page, name: str, predicate_js: str) -> None:
    page.evaluate(f"() => {{ window.__watch[{name!r}] = () => ({predicate_js}); }}")


def shown_after(page, name: str, event_at: float) -> float:
    """Seconds from `event_at` (epoch) to the page showing change `name`."""
    page.wait_for_function(f"window.__seen[{name!r}] !== undefined", timeout=WAIT_MS)
    assert page.evaluate("window.__noReload") is True, "the page reloaded"
    elapsed = page.evaluate(f"window.__seen[{name!r}]") / 1000 - event_at
    print(f"{name!r} shown {elapsed:.3f} s after the event")  # -s shows the figures
    return elapsed


def in_worker(function, *args):
    """Run a service as a Celery worker would: in a thread of its own, with no event loop
    (Playwright keeps one running in the test's thread, where the after-commit push cannot run
    async_to_sync), with its own database connection, closed after."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = function(*args)
        except BaseException as error:  # re-raised in the test's thread
            outcome["error"] = error
        finally:
            connection.close()

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(60)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def status_message(key: str, state: str) -> list:
    now_ms = int(time.time() * 1000)
    return parse_message(f"fleet/{key}/status", f'{{"state": "{state}"}}'.encode(), now_ms)


def reading(key: str, temperature: float) -> list:
    now_ms = int(time.time() * 1000)
    body = f'{{"ts": {now_ms}, "metrics": {{"temperature": {temperature}}}}}'
    return parse_message(f"fleet/{key}/telemetry", body.encode(), now_ms)


def test_an_operator_watches_a_device_go_offline_and_come_back_with_its_alert_live(
    dashboards_server, fleet, browser_context, chromium
):
    overview = log_in(browser_context, dashboards_server, "alice", "/")
    assert overview.evaluate("document.title").startswith("Fleet overview")
    device_page = log_in(browser_context, dashboards_server, "alice", "/devices/acme-freezer-2/")
    other_context = chromium.new_context(viewport={"width": 1400, "height": 900})
    try:
        carol = log_in(other_context, dashboards_server, "carol", "/")
        assert overview.locator('[data-count="offline"]').inner_text() == "0"
        watch(
            overview,
            "offline",
            "document.querySelector('[data-count=\"offline\"]').textContent.trim() === '1'",
        )
        watch(
            overview,
            "alert",
            "document.querySelector('#recent-alerts').textContent.includes('Freezer 2 is offline')",
        )
        watch(
            device_page,
            "offline",
            "document.querySelector('#device-status').dataset.status === 'offline'",
        )

        # The freezer loses power: the broker publishes its last will.
        went_offline = time.time()
        in_worker(ingest_batch, [status_message("acme-freezer-2", "offline")])

        assert shown_after(overview, "offline", went_offline) < LIVE_WITHIN
        assert shown_after(overview, "alert", went_offline) < LIVE_WITHIN
        assert shown_after(device_page, "offline", went_offline) < LIVE_WITHIN
        screenshot(overview, "overview-device-offline-alert-open")
        screenshot(device_page, "device-page-offline")

        watch(
            overview,
            "online",
            "document.querySelector('[data-count=\"offline\"]').textContent.trim() === '0'",
        )
        watch(
            overview,
            "resolved",
            "!document.querySelector('#recent-alerts').textContent"
            ".includes('Freezer 2 is offline')",
        )
        watch(
            device_page,
            "online",
            "document.querySelector('#device-status').dataset.status === 'online'",
        )

        # Power is back: the device speaks again.
        came_back = time.time()
        in_worker(
            ingest_batch,
            [status_message("acme-freezer-2", "online"), reading("acme-freezer-2", -18)],
        )

        assert shown_after(overview, "online", came_back) < LIVE_WITHIN
        assert shown_after(overview, "resolved", came_back) < LIVE_WITHIN
        assert shown_after(device_page, "online", came_back) < LIVE_WITHIN
        screenshot(overview, "overview-device-back-online")

        # Globex's operator saw none of it: only her socket's own "ready" event reached her page.
        assert carol.evaluate("IoTFleetLive.stats.events") == 1
        assert "Freezer 2" not in carol.content()
        assert carol.locator('[data-count="total"]').inner_text() == "1"  # her pump only
    finally:
        other_context.close()


def test_an_event_between_the_page_render_and_its_socket_joining_is_not_missed(
    dashboards_server, fleet, browser_context
):
    log_in(browser_context, dashboards_server, "alice", "/").close()  # the session cookie
    page = browser_context.new_page()
    page.set_default_timeout(SETUP_TIMEOUT_MS)
    held: list = []
    # The page's websocket is held back, as on a slow network or a loaded server: the page is
    # rendered, and its socket has not joined the tenant's group yet when the device drops off.
    page.route_web_socket("**/ws/fleet/", lambda socket: held.append(socket))
    page.goto(f"{dashboards_server}/")
    page.wait_for_function("document.documentElement.dataset.live === 'connecting'")
    assert held, "the page opened no websocket"
    page.evaluate("window.__noReload = true")
    assert page.locator('[data-count="offline"]').inner_text() == "0"

    in_worker(ingest_batch, [status_message("acme-freezer-2", "offline")])
    held[0].connect_to_server()

    page.wait_for_function(
        "document.querySelector('[data-count=\"offline\"]').textContent.trim() === '1'",
        timeout=WAIT_MS,
    )
    assert page.evaluate("window.__noReload") is True


def test_a_rule_alert_appears_on_the_alerts_page_and_the_operator_acknowledges_it(
    dashboards_server, fleet, browser_context
):
    page = log_in(browser_context, dashboards_server, "alice", "/alerts/")
    assert "No alert matches" in page.locator("#alert-rows").inner_text()
    watch(page, "alert", "document.querySelector('#alert-rows').textContent.includes('Too warm')")

    too_warm = time.time()
    in_worker(ingest_batch, [reading("acme-freezer-1", 11.5)])

    assert shown_after(page, "alert", too_warm) < LIVE_WITHIN
    screenshot(page, "alerts-page-rule-alert-open")

    page.fill("input[name=note]", "Door was open, closed it")
    page.click("#alert-rows button[name=one][value^=acknowledge]")
    page.wait_for_selector("#alert-rows tr[data-state=acknowledged]")
    assert "1 alert acknowledged." in page.locator(".messages").inner_text()
    assert "Door was open, closed it" in page.locator("#alert-rows").inner_text()
    screenshot(page, "alerts-page-acknowledged")


def test_the_device_page_shows_new_values_and_the_chart_without_reload(
    dashboards_server, fleet, browser_context
):
    start_ms = int(time.time() * 1000) - 30 * 60_000
    history = []
    for n in range(30):
        body = {"ts": start_ms + n * 60_000, "metrics": {"temperature": -18 + (n % 7) * 0.8}}
        history.append(
            parse_message(
                "fleet/acme-freezer-3/telemetry",
                json.dumps(body).encode(),
                int(time.time() * 1000),
            )
        )
    in_worker(ingest_batch, history)
    page = log_in(browser_context, dashboards_server, "alice", "/devices/acme-freezer-3/?range=1h")
    assert page.locator("#charts svg polyline.series").count() == 1
    assert page.locator("#charts svg .threshold").count() == 1
    watch(page, "value", "document.querySelector('#latest').textContent.includes('-4.25')")

    sent = time.time()
    in_worker(ingest_batch, [reading("acme-freezer-3", -4.25)])

    assert shown_after(page, "value", sent) < LIVE_WITHIN
    screenshot(page, "device-page-live-values-and-chart")
    assert datetime.now(UTC)  # the page stays up: no reload marker lost
    assert page.evaluate("window.__noReload") is True


def test_an_operator_sends_a_command_and_a_desired_state_and_sees_the_device_answer(
    launch, redis_server, mosquitto, fleet, browser_context
):
    """The whole way, with real processes: the device page's form → daphne → a Celery worker
    publishes on MQTT → the simulated device answers → mqtt_ingest → a Celery worker stores it
    and pushes → the page shows the answer, without a reload. Then SCENARIOS.md #4 for one
    device: a desired reporting_interval reaches the device, which applies and reports it, and
    the page shows the delta cleared."""
    env = process_env(redis_server, mosquitto, INGEST_HOLD_SECONDS="0.2")
    base = start_daphne(launch, **env)
    worker = launch(*celery_worker(f"pytest-{uuid.uuid4().hex[:8]}"), **env)
    ingest = launch("manage.py", "mqtt_ingest", "--client-id", f"pytest-{uuid.uuid4().hex}", **env)
    wait_for_output(worker, "ready.")
    wait_for_output(ingest, "connected to")
    # The first Acme device by key is the one the simulator brings to life.
    simulator = launch(
        "manage.py", "simulate", "--tenant", "acme", "--devices", "1", "--rate", "0.5",
        "--duration", "300", **env,
    )  # fmt: skip
    try:
        drive_command_and_desired_state(browser_context, base)
    except Exception as error:  # say what the processes saw, not only what the page did not
        logs = "\n".join(
            f"--- {name}:\n{output_of(process)[-3000:]}"
            for name, process in (("simulator", simulator), ("ingest", ingest), ("worker", worker))
        )
        raise AssertionError(f"{error}\n{logs}") from error
    assert simulator.poll() is None, output_of(simulator)


def drive_command_and_desired_state(browser_context, base: str) -> None:
    page = log_in(browser_context, base, "alice", "/devices/acme-freezer-1/")
    # Its reported shadow arriving live says it is connected (and subscribed: it subscribes first).
    page.wait_for_selector("#shadow-reported:has-text('reporting_interval')", timeout=WAIT_MS * 5)

    page.fill("#id_name", "ping")
    page.click(".command-form button[type=submit]")
    page.wait_for_url(f"{base}/devices/acme-freezer-1/#commands")
    instrument(page)  # a new page load: from here on, no reload
    row = page.locator("#command-list tr[data-command]").first
    assert row.get_attribute("data-state") in ("queued", "sent", "acknowledged")
    page.wait_for_selector("#command-list tr[data-state=acknowledged]", timeout=WAIT_MS * 5)
    assert '"pong": true' in page.locator("#command-list .command-result").first.inner_text()
    assert page.evaluate("window.__noReload") is True
    screenshot(page, "device-page-command-acknowledged")

    page.click("details.edit-desired summary")
    page.fill("details.edit-desired textarea", '{"reporting_interval": 2}')
    page.click("details.edit-desired button[type=submit]")
    page.wait_for_url(f"{base}/devices/acme-freezer-1/#shadow")
    instrument(page)
    page.wait_for_selector(
        "#shadow-reported:has-text('\"reporting_interval\": 2')", timeout=WAIT_MS * 5
    )
    page.wait_for_function(
        "document.querySelector('#shadow-delta').textContent.trim() === '{}'", timeout=WAIT_MS
    )
    # Its telemetry shows up too, without a reload.
    page.wait_for_selector("#latest tr[data-metric=temperature]", timeout=WAIT_MS * 5)
    assert page.evaluate("window.__noReload") is True
    screenshot(page, "device-page-desired-state-applied")


def screenshot(page, name: str) -> None:
    page.evaluate("window.scrollTo(0, 0)")  # the sticky top bar where it belongs
    save_screenshot(page, name)


def wait_for_output(process, text: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while text not in output_of(process):
        assert process.poll() is None, f"exited early:\n{output_of(process)}"
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{output_of(process)}"
        time.sleep(0.2)
