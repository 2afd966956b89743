"""Email through Django's email backend (settings EMAIL_URL) to the channel's recipients."""

from __future__ import annotations

import smtplib
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.mail import EmailMessage

from alerts.transports import TransportError, alert_summary, email_recipients

if TYPE_CHECKING:
    from alerts.models import Alert, Notification

# Added to the subject of everything but the first notice, so a reader tells them apart.
SUBJECT_SUFFIX = {
    "escalated": " (escalated)",
    "reminder": " (reminder)",
    "resolved": " (resolved)",
    "test": " (test)",
}


def subject(alert: Alert, reason: str) -> str:
    """ "[IoTFleet] <severity> <title>", one line (headers may not hold new lines)."""
    suffix = SUBJECT_SUFFIX.get(reason, "")
    text = f"[IoTFleet] {alert.get_severity_display()} {alert.title}{suffix}"
    return " ".join(text.split())[:250]


def send(notification: Notification) -> None:
    channel = notification.channel
    recipients = email_recipients(channel.email_to)
    if not recipients:
        raise TransportError(f"Channel “{channel.name}” has no recipients: add an address.")
    alert = notification.alert
    message = EmailMessage(
        subject=subject(alert, notification.reason),
        body=alert_summary(alert, notification.reason),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=recipients,
        headers={"X-IoTFleet-Delivery": str(notification.pk or "test")},
    )
    try:
        sent = message.send(fail_silently=False)
    except (smtplib.SMTPException, OSError) as error:
        raise TransportError(
            f"The mail server refused or did not answer ({error}): check EMAIL_URL and the "
            "recipients."
        ) from error
    if not sent:
        raise TransportError("The email backend sent nothing: check EMAIL_URL.")
