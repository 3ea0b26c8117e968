"""Store read methods (what analytics and the dashboard use): fleet.protocol records filtered by device, group,
release and time; idempotent inserts; the database is WAL."""

from __future__ import annotations

from fleet.protocol import AlertRecord, EventRecord, MetricsRecord, PredictionRecord, ReviewRecord
from fleet.store import Store


def _pred(device: str, release: str, revision: int, at: str, **kw) -> PredictionRecord:
    return PredictionRecord(device=device, source="http", release=release, revision=revision, mode="shadow",
                            decision="pass", created_at=at, latency_ms={"total": 5.0}, **kw)


def test_filters_by_device_group_release_and_time(tmp_path, fleet):
    st: Store = fleet.store
    fleet.devices.add("a", groups=["line-1"])
    fleet.devices.add("b", groups=["line-1", "night"])
    fleet.devices.add("c", groups=["line-2"])
    recs = [_pred("a", "seal", 1, "2026-01-01T10:00:00+00:00"), _pred("b", "seal", 2, "2026-01-01T11:00:00+00:00"),
            _pred("c", "seal", 2, "2026-01-01T12:00:00+00:00"),
            _pred("a", "other", 1, "2026-01-02T10:00:00+00:00", role="candidate")]
    assert st.insert_records("predictions", recs) == 4
    assert st.insert_records("predictions", recs[:2]) == 0
    ids = lambda it: [r.id for r in it]
    assert ids(st.predictions(device="a")) == [recs[0].id, recs[3].id]
    assert ids(st.predictions(group="line-1")) == [recs[0].id, recs[1].id, recs[3].id]
    assert ids(st.predictions(group="nobody")) == []
    assert ids(st.predictions(release="seal")) == [r.id for r in recs[:3]]
    assert ids(st.predictions(release="seal@2")) == [recs[1].id, recs[2].id]
    assert ids(st.predictions(since="2026-01-01T11:00:00+00:00", until="2026-01-02T00:00:00+00:00")) == \
        [recs[1].id, recs[2].id]
    assert ids(st.predictions(role="candidate")) == [recs[3].id]
    assert ids(st.predictions(limit=1)) == [recs[0].id]
    assert list(st.predictions(device="b"))[0] == recs[1]  # the whole record comes back, typed
    rev = ReviewRecord(prediction_id=recs[0].id, device="a", inspector="ann", verdict="false_positive",
                       override=True, model_decision="flag", release="seal", revision=1)
    st.insert_records("reviews", [rev])
    assert list(st.reviews(group="line-1", release="seal@1")) == [rev]
    m = MetricsRecord(device="c", release="seal", revision=2, window_s=60, values={"fps": 9.5})
    al = AlertRecord(device="b", rule="override_rate", state="raised", value=0.4, threshold=0.2)
    ev = EventRecord(device="a", kind="activation", detail={"state": "commit"})
    st.insert_many({"metrics": [m], "alerts": [al], "events": [ev]})
    assert list(st.metrics(group="line-2")) == [m] and list(st.alerts(group="night")) == [al]
    assert list(st.events(kind="activation")) == [ev] and list(st.events(kind="other")) == []
    assert st.rows("PRAGMA journal_mode")[0]["journal_mode"] == "wal"
    assert st.count("predictions") == 4
