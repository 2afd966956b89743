"""Webhooks against a real HTTP receiver on localhost: signed JSON, retries with backoff, one
delivery recorded however many attempts it took — in this process and through a real worker."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest
from django.utils import timezone

from alerts import notifications
from alerts.models import ChannelKind, Notification, NotificationStatus
from alerts.notifications import deliver_notification, queue_notifications, retry_delay
from alerts.transports import webhook
from tests.alerts.test_notifications import attach, make_channel, make_rule, open_alert
from tests.servers import celery_worker, database_url, free_port, output_of, process_env

SECRET = "receiver-shared-secret-0042"


@dataclass
class Receiver:
    """An HTTP server in a thread that answers POSTs with the statuses of `script` in turn (the
    last one from then on) and keeps what it got."""

    script: list[int]
    server: ThreadingHTTPServer | None = None
    received: list[tuple[Message, bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/iotfleet"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((self.headers, body))  # case-insensitive
                status = receiver.script[min(len(receiver.received), len(receiver.script)) - 1]
                answer = b'{"ok": true}' if status < 300 else b"receiver is down for maintenance"
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(script=[500, 500, 200])
    server.start()
    yield server
    server.stop()


def signed_correctly(headers: Message, body: bytes) -> bool:
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["X-IoTFleet-Signature"], expected)


def webhook_alert(acme, device_type, device, url: str):
    rule = make_rule(acme, device_type)
    channel = make_channel(
        acme, "Ops hook", ChannelKind.WEBHOOK, webhook_url=url, webhook_secret=SECRET
    )
    attach(rule, channel)
    return open_alert(rule, device, count=7, values={"temperature": 4.5})


def queued(alert, capture) -> int:
    with capture(execute=False):
        (notification_id,) = queue_notifications(alert.pk, "opened")
    return notification_id


# --- In this process ----------------------------------------------------------------------------


def test_a_receiver_failing_twice_then_answering_gets_one_delivery_recorded_as_sent(
    acme, acme_freezer_type, acme_device, receiver, django_capture_on_commit_callbacks
):
    alert = webhook_alert(acme, acme_freezer_type, acme_device, receiver.url)
    notification_id = queued(alert, django_capture_on_commit_callbacks)

    outcomes = [deliver_notification(notification_id) for _ in range(3)]

    assert [o.status for o in outcomes] == ["retrying", "retrying", "sent"]
    assert outcomes[0].retry_in < outcomes[1].retry_in  # backoff grows
    assert outcomes[2].retry_in is None
    notification = Notification.objects.get()
    assert notification.pk == notification_id
    assert (notification.status, notification.attempts) == (NotificationStatus.SENT, 3)
    assert notification.sent_at is not None
    assert notification.last_error == ""
    assert len(receiver.received) == 3
    assert {h["X-IoTFleet-Delivery"] for h, _ in receiver.received} == {str(notification_id)}
    assert all(signed_correctly(h, body) for h, body in receiver.received)


def test_a_sent_delivery_is_not_sent_again(
    acme, acme_freezer_type, acme_device, django_capture_on_commit_callbacks
):
    ok = Receiver(script=[200])
    ok.start()
    try:
        alert = webhook_alert(acme, acme_freezer_type, acme_device, ok.url)
        notification_id = queued(alert, django_capture_on_commit_callbacks)
        assert deliver_notification(notification_id).status == "sent"
        assert deliver_notification(notification_id).status == "sent"  # a redelivered task
    finally:
        ok.stop()
    assert len(ok.received) == 1
    assert Notification.objects.get().attempts == 1


def test_the_body_is_the_alert_as_json_with_its_event(
    acme, acme_freezer_type, acme_device, receiver, django_capture_on_commit_callbacks
):
    receiver.script = [200]
    alert = webhook_alert(acme, acme_freezer_type, acme_device, receiver.url)
    deliver_notification(queued(alert, django_capture_on_commit_callbacks))

    (headers, body) = receiver.received[0]
    assert headers["Content-Type"] == "application/json"
    document = json.loads(body)
    assert document["event"] == "alert.opened"
    assert document["alert"] == {
        "id": alert.pk,
        "kind": "rule",
        "state": "open",
        "severity": "critical",
        "title": alert.title,
        "device": {"key": "acme-freezer-1", "name": "Freezer 1"},
        "rule": {"id": alert.rule_id, "name": "Freezer too warm"},
        "values": {"temperature": 4.5},
        "count": 7,
        "first_triggered_at": alert.first_triggered_at.isoformat(),
        "last_triggered_at": alert.last_triggered_at.isoformat(),
    }
    sent_at = timezone.datetime.fromisoformat(document["sent_at"])
    assert abs((timezone.now() - sent_at).total_seconds()) < 60


def test_a_receiver_that_keeps_failing_is_given_up_after_the_last_attempt(
    acme, acme_freezer_type, acme_device, receiver, settings, django_capture_on_commit_callbacks
):
    settings.WEBHOOK_MAX_ATTEMPTS = 4
    receiver.script = [503]
    alert = webhook_alert(acme, acme_freezer_type, acme_device, receiver.url)
    notification_id = queued(alert, django_capture_on_commit_callbacks)

    outcomes = [deliver_notification(notification_id) for _ in range(6)]

    assert [o.status for o in outcomes] == ["retrying"] * 3 + ["failed"] * 3
    assert outcomes[3].retry_in is None
    notification = Notification.objects.get()
    assert (notification.status, notification.attempts) == (NotificationStatus.FAILED, 4)
    assert notification.response_code == 503
    assert "answered HTTP 503: receiver is down for maintenance" in notification.last_error
    assert len(receiver.received) == 4


def test_a_receiver_that_is_not_listening_is_retried_with_the_reason(
    acme, acme_freezer_type, acme_device, django_capture_on_commit_callbacks
):
    url = f"http://127.0.0.1:{free_port()}/hook"
    alert = webhook_alert(acme, acme_freezer_type, acme_device, url)
    notification_id = queued(alert, django_capture_on_commit_callbacks)

    assert deliver_notification(notification_id).status == "retrying"

    notification = Notification.objects.get()
    assert notification.response_code is None
    assert notification.last_error.startswith(f"Could not reach {url}")
    assert "is the receiver up?" in notification.last_error


def test_a_redirect_is_a_failure_not_followed(
    acme, acme_freezer_type, acme_device, receiver, django_capture_on_commit_callbacks
):
    receiver.script = [302]
    alert = webhook_alert(acme, acme_freezer_type, acme_device, receiver.url)
    deliver_notification(queued(alert, django_capture_on_commit_callbacks))

    notification = Notification.objects.get()
    assert (notification.status, notification.response_code) == ("retrying", 302)
    assert len(receiver.received) == 1


def test_the_backoff_doubles_with_jitter(monkeypatch):
    monkeypatch.setattr(notifications, "BACKOFF_SECONDS", 2.0)
    for attempts, base in [(1, 2), (2, 4), (3, 8), (4, 16)]:
        delays = [retry_delay(attempts) for _ in range(50)]
        assert all(0.8 * base <= d <= 1.2 * base for d in delays)
        assert len(set(delays)) > 1  # jitter: workers retrying together spread out
    assert retry_delay(30) <= notifications.BACKOFF_MAX_SECONDS * 1.2


def test_the_signature_covers_the_exact_body():
    body = b'{"event":"alert.opened"}'
    assert webhook.signature(SECRET, body) == (
        "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    )
    assert webhook.signature(SECRET, body + b" ") != webhook.signature(SECRET, body)


@pytest.mark.django_db(transaction=True)
def test_a_delivery_another_worker_is_sending_is_skipped(
    acme, acme_freezer_type, acme_device, receiver, django_capture_on_commit_callbacks
):
    receiver.script = [200]
    alert = webhook_alert(acme, acme_freezer_type, acme_device, receiver.url)
    notification_id = queue_notifications(alert.pk, "opened")[0]

    with psycopg.connect(database_url()) as other_worker:
        other_worker.execute(
            "SELECT 1 FROM alerts_notification WHERE id = %s FOR UPDATE", [notification_id]
        )
        assert deliver_notification(notification_id).status == "pending"
    assert receiver.received == []
    assert deliver_notification(notification_id).status == "sent"
    assert len(receiver.received) == 1


# --- Through a real Celery worker ---------------------------------------------------------------

QUEUE_IT = """
import django, sys; django.setup()
from alerts.notifications import queue_notifications
print(queue_notifications(int(sys.argv[1]), "opened"))
"""


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_retries_a_failing_receiver_until_one_delivery_succeeds(
    acme, acme_freezer_type, acme_device, receiver, redis_server, launch
):
    alert = webhook_alert(acme, acme_freezer_type, acme_device, receiver.url)
    env = process_env(redis_server, IOTFLEET_NOTIFY_BACKOFF_SECONDS="0.3")
    worker = launch(*celery_worker(f"notify-{free_port()}"), **env)
    _wait_for(lambda: "ready." in output_of(worker), "the worker to start", worker)

    # Queued the way alerts/services.py does it, from another process (on commit).
    queuer = launch("-c", QUEUE_IT, str(alert.pk), **env)
    assert queuer.wait(timeout=60) == 0, output_of(queuer)

    def sent() -> bool:
        return Notification.objects.filter(status=NotificationStatus.SENT).exists()

    _wait_for(sent, "the delivery to succeed", worker)
    time.sleep(1.5)  # a duplicate delivery would land now
    notification = Notification.objects.get()
    assert (notification.status, notification.attempts) == (NotificationStatus.SENT, 3)
    assert len(receiver.received) == 3
    assert {h["X-IoTFleet-Delivery"] for h, _ in receiver.received} == {str(notification.pk)}
    assert all(signed_correctly(h, body) for h, body in receiver.received)


def _wait_for(check, what: str, process, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        assert process.poll() is None, f"the worker exited:\n{output_of(process)}"
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}:\n{output_of(process)}")
