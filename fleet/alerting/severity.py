"""Severity per alert rule, and the runbook each rule links to. A rule's family is its name before any `:class`
or `|release` suffix (`override_rate:Defective|pcb-line@2` belongs to `override_rate`)."""

from __future__ import annotations

from enum import Enum


class Severity(str, Enum):
    """How urgently a person must act: critical pages now, warning is looked at today, info is for the record."""

    critical = "critical"
    warning = "warning"
    info = "info"

    @property
    def rank(self) -> int:
        """Higher is more urgent (for sorting and `min_severity` routing)."""
        return {"critical": 2, "warning": 1, "info": 0}[self.value]


# The fleet's rule families (fleet.analytics.alerts) and the service-level ones the Prometheus rules add.
# Defaults: what stops inspection or loses data is critical; a drift a person should look at today is a warning.
DEFAULT_SEVERITY: dict[str, Severity] = {
    "error_rate": Severity.critical,
    "queue_growing": Severity.critical,
    "latency": Severity.warning,
    "override_rate": Severity.warning,
    "class_share": Severity.warning,
    "confidence_drop": Severity.warning,
    "low_confidence_spike": Severity.warning,
}

# Anchors of docs/runbooks.md (tests/alerting/test_runbooks.py checks each one is a heading there).
RUNBOOKS: dict[str, str] = {
    "error_rate": "error-rate",
    "queue_growing": "queue-backlog",
    "latency": "latency",
    "override_rate": "override-rate",
    "class_share": "prediction-drift",
    "confidence_drop": "prediction-drift",
    "low_confidence_spike": "prediction-drift",
}


def family(rule: str) -> str:
    """`override_rate:Defective|pcb-line@2` -> `override_rate`; `latency:total` -> `latency`."""
    return rule.split("|", 1)[0].split(":", 1)[0]


def severity_of(rule: str, overrides: dict[str, Severity] | None = None) -> Severity:
    """The configured severity of a rule (by full rule name first, then by family), else the default; a rule
    nobody classified is a warning (someone should look, nobody is woken)."""
    ov = overrides or {}
    base = rule.split("|", 1)[0]
    for key in (rule, base, family(rule)):
        if key in ov:
            return ov[key]
    return DEFAULT_SEVERITY.get(family(rule), Severity.warning)


def runbook_of(rule: str, base_url: str) -> str:
    """The runbook link of a rule: `{base_url}#{anchor}` (the alert-handling overview when the family has none)."""
    return f"{base_url}#{RUNBOOKS.get(family(rule), 'handling-an-alert')}"
