"""Scenario 2 end to end ("a device misbehaves"): a freezer's temperature climbs past its rule's
threshold for five minutes; through the real Mosquitto, `mqtt_ingest` process, Redis and Celery
worker process, one alert opens (not one per reading), the on-call email and one signed webhook
POST go out, an operator acknowledges it with a note, and it resolves itself once the
temperature has been normal for the hysteresis period.

Readings carry device timestamps spread over the last minutes, so "five minutes" of device time
pass in seconds of test time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.telemetry.pipeline import Pipeline, run_manage, telemetry_payload

SECRET = "freezer-webhook-secret"
STEP_MS = 10_000
MINUTE_MS = 60_000

RULE_SETUP = """
import django; django.setup()
from datetime import timedelta
from django.contrib.auth import get_user_model
from alerts.models import ChannelKind, NotificationChannel
from devices.models import DeviceType, Tenant
from devices.services import add_member
from rules.models import Rule, RuleKind
from rules.services import save_rule
tenant = Tenant.objects.get(slug="pipeline")
operator = get_user_model().objects.create_user("olivia", password="x")
add_member(operator, tenant, "operator")
email = NotificationChannel.objects.create(
    tenant=tenant, name="On-call email", kind=ChannelKind.EMAIL, email_to="oncall@example.com")
hook = NotificationChannel.objects.create(
    tenant=tenant, name="Ops webhook", kind=ChannelKind.WEBHOOK, webhook_url="{url}",
    webhook_secret="{secret}")
rule = Rule(tenant=tenant, name="Freezer too warm", kind=RuleKind.DURATION,
    condition="temperature > -10", for_duration=timedelta(minutes=5),
    hysteresis=timedelta(minutes=1), device_type=DeviceType.objects.get(tenant=tenant))
save_rule(rule, [email, hook], operator)
rule.rule_channels.update(position=0)  # one step: email and webhook together
"""

ACKNOWLEDGE = """
import django; django.setup()
from django.contrib.auth import get_user_model
from alerts.models import Alert
from alerts.services import acknowledge_alert
acknowledge_alert(Alert.objects.get(), get_user_model().objects.get(username="olivia"),
    "Door was left open; closed it")
"""


class Receiver(BaseHTTPRequestHandler):
    posts: list[tuple[dict, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook():
    Receiver.posts = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()


def alert_row(pipeline: Pipeline) -> tuple | None:
    rows = pipeline.query(
        "SELECT state, count, acknowledged_by_id IS NOT NULL, acknowledge_note, resolved_at, "
        "resolved_by_id, cleared_at FROM alerts_alert"
    )
    assert len(rows) <= 1, f"one alert expected, got {rows}"
    return rows[0] if rows else None


def publish_freezer(publisher, start_ms: int, temperatures: list[float], seq: int) -> int:
    for n, value in enumerate(temperatures):
        publisher.publish(
            "fleet/pl-000/telemetry", telemetry_payload(start_ms + n * STEP_MS, seq + n, value)
        )
    publisher.wait_all_acknowledged()
    return seq + len(temperatures)


def test_a_warm_freezer_raises_one_alert_notifies_once_and_resolves_itself(
    pipeline, publisher, webhook, tmp_path
):
    mail_dir = tmp_path / "mail"
    mail_dir.mkdir()
    run_manage(pipeline.database_url, "-c", RULE_SETUP.format(url=webhook, secret=SECRET))
    pipeline.start_worker(EMAIL_URL=f"filemail:///{mail_dir}")
    pipeline.start_ingest()

    # Device time: 2 minutes normal, then 6 minutes at -5 °C (one reading every 10 s), ending
    # about now; neighbours report normally all along.
    t0 = int(time.time() * 1000) - 8 * MINUTE_MS
    seq = publish_freezer(publisher, t0, [-18.0] * 12, 0)
    warm_start = t0 + 12 * STEP_MS
    seq = publish_freezer(publisher, warm_start, [-5.0] * 37, seq)
    for key in ("pl-001", "pl-002"):
        publisher.publish(f"fleet/{key}/telemetry", telemetry_payload(t0, 0, -19.0))
    publisher.wait_all_acknowledged()

    # The rule holds from warm_start; it breaks from warm_start + 5 min: readings 30..36.
    pipeline.wait_until("the alert to open", lambda: alert_row(pipeline) is not None)
    pipeline.wait_until("the webhook", lambda: len(Receiver.posts) >= 1)
    pipeline.wait_until("the email", lambda: any(mail_dir.iterdir()))
    time.sleep(1.0)  # anything extra would arrive now
    state, count, *_ = alert_row(pipeline)
    assert (state, count) == ("open", 7)
    assert pipeline.scalar("SELECT count(*) FROM telemetry_reading") == 3 * (12 + 37 + 2)

    ((headers, body),) = Receiver.posts
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-iotfleet-signature"], expected)
    document = json.loads(body)
    assert document["alert"]["state"] == "open"
    assert "Freezer too warm" in document["alert"]["title"]
    mails = [p.read_text() for p in mail_dir.iterdir()]
    assert len(mails) == 1
    assert "oncall@example.com" in mails[0]
    assert "Freezer too warm" in mails[0]

    run_manage(pipeline.database_url, "-c", ACKNOWLEDGE)
    assert alert_row(pipeline)[:4] == ("acknowledged", 7, True, "Door was left open; closed it")

    # Normal again for 30 s of device time: shorter than the hysteresis, so still unresolved ...
    back = warm_start + 37 * STEP_MS
    seq = publish_freezer(publisher, back, [-18.0] * 4, seq)
    pipeline.wait_until("the clear", lambda: alert_row(pipeline)[6] is not None)
    assert alert_row(pipeline)[0] == "acknowledged"
    # ... and once normal for over a minute it resolves itself (no user), with no new alert.
    publish_freezer(publisher, back + 4 * STEP_MS, [-18.0] * 4, seq)
    pipeline.wait_until("the alert to resolve", lambda: alert_row(pipeline)[0] == "resolved")
    state, count, acknowledged, _, resolved_at, resolved_by, _ = alert_row(pipeline)
    assert (count, acknowledged, resolved_by) == (7, True, None)
    assert resolved_at is not None
    assert pipeline.scalar("SELECT count(*) FROM alerts_alert") == 1
