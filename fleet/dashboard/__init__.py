"""The fleet dashboard: server-rendered pages (devices, rollouts with confirmed controls, the four pillars with
30-day trends, alerts, the shadow report and go/no-go) and Prometheus /metrics, as one FastAPI router that the
fleet API includes."""

from fleet.dashboard.pages import build_router

router = build_router()

__all__ = ["router"]
