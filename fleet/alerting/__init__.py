"""Alerts that reach people: severity per rule, acknowledge / silence / resolve (`AlertBook`), grouping and
delivery to webhooks (Alertmanager payload) and e-mail (`Notifier`). The rules themselves are
fleet.analytics.alerts; the monitoring pass that runs them is fleet.monitoring."""

from fleet.alerting.actions import ActionLog, JsonlActionLog
from fleet.alerting.book import AlertBook, Incident, incidents
from fleet.alerting.config import AlertingConfig, EmailChannel, WebhookChannel
from fleet.alerting.model import Ack, AlertView, Expire, Resolve, Silence
from fleet.alerting.notifier import Delivery, NotificationLog, Notifier
from fleet.alerting.payload import Notification, NotifiedAlert, alertmanager
from fleet.alerting.severity import Severity, family, runbook_of, severity_of

__all__ = ["Ack", "ActionLog", "AlertBook", "AlertView", "AlertingConfig", "Delivery", "EmailChannel", "Expire",
           "Incident", "JsonlActionLog", "Notification", "NotificationLog", "NotifiedAlert", "Notifier", "Resolve",
           "Severity", "Silence", "WebhookChannel", "alertmanager", "family", "incidents", "runbook_of",
           "severity_of"]
