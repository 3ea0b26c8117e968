"""Delivering one notification over one channel: an HTTP POST of the Alertmanager payload, or an e-mail over
SMTP. A delivery either succeeds or raises DeliveryError naming the channel and the cause; the notifier retries."""

from __future__ import annotations

import smtplib
import ssl

import httpx

from fleet.alerting.config import EmailChannel, WebhookChannel
from fleet.alerting.payload import Notification, alertmanager, email


class DeliveryError(Exception):
    """One attempt failed (connection refused, timeout, non-2xx answer, SMTP refusal): worth retrying."""


class PartialDelivery(DeliveryError):
    """Some recipients took the message and some refused it: retrying would send it twice to the first."""


def deliver(channel: WebhookChannel | EmailChannel, n: Notification) -> None:
    if isinstance(channel, WebhookChannel):
        _webhook(channel, n)
    else:
        _email(channel, n)


def _webhook(ch: WebhookChannel, n: Notification) -> None:
    headers = {"User-Agent": "shadowline-fleet"}
    token = ch.token()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        r = httpx.post(ch.url, json=alertmanager(n, ch.name), headers=headers, timeout=ch.timeout_s)
    except httpx.HTTPError as err:
        raise DeliveryError(f"webhook {ch.name}: {type(err).__name__}: {err}") from err
    if not 200 <= r.status_code < 300:
        raise DeliveryError(f"webhook {ch.name}: HTTP {r.status_code}: {r.text[:200]}")


def _email(ch: EmailChannel, n: Notification) -> None:
    msg = email(n, ch.sender, ch.to, ch.subject_prefix)
    try:
        if ch.security == "tls":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(ch.smtp_host, ch.smtp_port, timeout=ch.timeout_s,
                                                  context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(ch.smtp_host, ch.smtp_port, timeout=ch.timeout_s)
        with smtp:
            if ch.security == "starttls":
                smtp.starttls(context=ssl.create_default_context())
            if ch.username:
                smtp.login(ch.username, ch.password() or "")
            refused = smtp.send_message(msg)
    except (OSError, smtplib.SMTPException) as err:
        raise DeliveryError(f"email {ch.name}: {type(err).__name__}: {err}") from err
    if refused:
        # some recipients took it, some did not: say who, so the admin fixes the address
        raise PartialDelivery(f"email {ch.name}: refused recipients {sorted(refused)}")
