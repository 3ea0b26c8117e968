"""The store contract on both engines (SQLite and PostgreSQL, through the `fleet` fixture): read methods that
analytics and the dashboard use (records filtered by device, group, release and time, counts in the database),
idempotent inserts, write transactions that roll back whole and publish only after they commit, serialised
read-then-write steps across connections, and store URLs."""

from __future__ import annotations

import threading

import pytest

from fleet.protocol import AlertRecord, EventRecord, MetricsRecord, PredictionRecord, ReviewRecord
from fleet.store import RECORD_COLUMNS, Store
from fleet.store.engine import normalise_url, redact
from runtime.errors import ConfigError


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
    if st.dialect == "sqlite":
        assert st.rows("PRAGMA journal_mode")[0]["journal_mode"] == "wal"
    assert st.count("predictions") == 4
    # figures counted by the database
    assert st.record_counts("predictions", by=("device",)) == [{"device": "a", "n": 2}, {"device": "b", "n": 1},
                                                               {"device": "c", "n": 1}]
    assert st.record_counts("predictions", group="line-1", release="seal", by=("revision", "role")) == \
        [{"revision": 1, "role": "active", "n": 1}, {"revision": 2, "role": "active", "n": 1}]
    assert sorted(st.latency_values(release="seal@2")) == [5.0, 5.0]
    with pytest.raises(ValueError, match="cannot count"):
        st.record_counts("predictions", by=("record",))


def test_overrides_are_integers_and_records_round_trip(fleet):
    st: Store = fleet.store
    revs = [ReviewRecord(prediction_id=f"p{i}", device="a", inspector="ann", verdict="confirm", override=i == 0,
                         model_decision="flag", release="seal", revision=1) for i in range(3)]
    st.insert_records("reviews", revs[:1])
    st.insert_records("reviews", [r.model_dump(mode="json") for r in revs])  # dicts, as the API and monitor pass
    assert st.count("reviews") == 3
    assert sum(r["override"] for r in st.rows("SELECT override FROM reviews")) == 1
    assert sorted(r.id for r in st.reviews()) == sorted(r.id for r in revs)


def test_a_prediction_row_holds_each_column_of_its_record(fleet):
    st: Store = fleet.store
    with_total = PredictionRecord(device="a", source="folder:x.png", release="seal", revision=4, mode="production",
                                  role="candidate", decision="flag", top_label="scratch", top_score=0.75,
                                  latency_ms={"verify": 2.5, "total": 3.5})
    without = with_total.model_copy(update={"id": "p-2", "latency_ms": {}, "top_label": None, "top_score": None})
    st.insert_records("predictions", [with_total, without])
    cols = ["id", *RECORD_COLUMNS["predictions"], "record"]
    rows = {r["id"]: r for r in st.rows(f"SELECT {', '.join(cols)} FROM predictions")}
    for rec in (with_total, without):
        row = rows[rec.id]
        assert {c: row[c] for c in RECORD_COLUMNS["predictions"] if c != "latency_ms"} == \
            {c: getattr(rec, c) for c in RECORD_COLUMNS["predictions"] if c != "latency_ms"}
        assert row["latency_ms"] == rec.latency_ms.get("total")
        assert PredictionRecord.model_validate_json(row["record"]) == rec


def test_records_already_stored_or_twice_in_a_batch_are_inserted_once_and_not_counted(fleet):
    """PostgreSQL copies a batch straight into the table and, when an id is already there (or twice in the batch),
    takes the batch again through ON CONFLICT DO NOTHING in the same transaction: nothing lost, nothing doubled."""
    st: Store = fleet.store

    def pred(i: int) -> PredictionRecord:
        return PredictionRecord(id=f"p-{i}", device="a", source="http", release="seal", revision=1, mode="shadow",
                                decision="pass")

    assert st.insert_records("predictions", [pred(i) for i in range(3)]) == 3  # all new
    assert st.insert_records("predictions", [pred(i) for i in range(2, 6)]) == 3  # p-2 stored already
    assert st.insert_records("predictions", [pred(6), pred(7), pred(6)]) == 2  # p-6 twice
    with st.transaction(serialised=False):  # a stored id in the first kind, then more in the same transaction
        assert st.insert_many({"predictions": [pred(0), pred(8)], "events": []}) == 1
        assert st.insert_records("predictions", [pred(9)]) == 1
    assert sorted(r["id"] for r in st.rows("SELECT id FROM predictions")) == [f"p-{i}" for i in range(10)]


def test_postgresql_bulk_insert_on_a_lost_connection_says_unavailable_and_loses_nothing(postgres, monkeypatch):
    """The PostgreSQL bulk insert (COPY) runs on psycopg's own cursor, outside SQLAlchemy's error handling: a server
    session ended under it still reads as StoreUnavailable (retry later), not an unknown error, and the retry on a
    fresh connection stores the batch once. (Unwrapped, this held only because the transaction's rollback on the
    dead connection failed too and SQLAlchemy's error replaced psycopg's.)"""
    from fleet.store import StoreUnavailable
    from fleet.store import engine as engines

    name = "store_copy_lost"
    st = Store(postgres.create_database(name, template="fleet_template"))
    kill = f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    recs = [PredictionRecord(id=f"p-{i}", device="a", source="http", release="seal", revision=1, mode="shadow",
                             decision="pass") for i in range(50)]
    try:
        assert st.insert_records("predictions", recs[:1]) == 1
        monkeypatch.setattr(engines, "PING_IDLE_S", 3600.0)  # the pooled connection is used unpinged
        postgres.admin(kill)
        with pytest.raises(StoreUnavailable, match="unavailable"):
            st.insert_records("predictions", recs)
        assert st.insert_records("predictions", recs) == 49
        assert st.rows("SELECT count(*) AS n FROM predictions") == [{"n": 50}]
    finally:
        st.close()
        postgres.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_transaction_rolls_back_whole_and_runs_after_commit_only_on_commit(fleet):
    st: Store = fleet.store
    published: list[str] = []

    def other_sees(device: str) -> bool:
        box: list[bool] = []
        t = threading.Thread(target=lambda: box.append(st.get("devices", device) is not None))
        t.start()
        t.join(10)
        return box[0]
    with pytest.raises(RuntimeError, match="boom"):
        with st.transaction() as tx:
            tx.upsert("devices", {"id": "x", "groups": "[]"}, pk="id")
            tx.after_commit(lambda: published.append("x"))
            with tx.transaction():  # nested: joins the outer one
                tx.upsert("devices", {"id": "y", "groups": "[]"}, pk="id")
            raise RuntimeError("boom")
    assert st.get("devices", "x") is None and st.get("devices", "y") is None and published == []
    with st.transaction() as tx:
        tx.upsert("devices", {"id": "x", "groups": "[]"}, pk="id")
        tx.after_commit(lambda: published.append(f"seen by another connection: {other_sees('x')}"))
    assert published == ["seen by another connection: True"]
    st.after_commit(lambda: published.append("outside"))  # outside a transaction: at once
    assert published[-1] == "outside"
    assert st.get("rollout_targets", ("r", "x")) is None
    with pytest.raises(ValueError, match="no table"):
        st.get("nope", "x")


def test_read_then_write_transactions_are_serialised(fleet):
    """Eight threads each read the counter and write it plus one, in `transaction()`: on both engines none of the
    increments is lost (SQLite: BEGIN IMMEDIATE; PostgreSQL: the store's advisory transaction lock)."""
    st: Store = fleet.store
    st.upsert("malformed", {"topic": "counter", "count": 0}, pk="topic")
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            for _ in range(25):
                with st.transaction() as tx:
                    n = tx.get("malformed", "counter")["count"]
                    tx.upsert("malformed", {"topic": "counter", "count": n + 1}, pk="topic")
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert st.get("malformed", "counter")["count"] == 200


def test_store_urls(tmp_path):
    assert normalise_url(tmp_path / "f.db") == f"sqlite:///{tmp_path / 'f.db'}"
    assert normalise_url("postgres://u:secret@h:5433/fleet") == "postgresql+psycopg://u:secret@h:5433/fleet"
    assert redact("postgresql+psycopg://u:secret@h/fleet") == "postgresql+psycopg://u:***@h/fleet"
    with pytest.raises(ConfigError, match="expected sqlite"):
        normalise_url("mysql://u:secret@h/fleet")
    try:
        normalise_url("mysql://u:secret@h/fleet")
    except ConfigError as err:
        assert "secret" not in str(err)


def test_a_pooled_postgresql_connection_whose_session_ended_is_replaced_before_use(postgres, monkeypatch):
    """The pool no longer pings on every checkout (a round trip each time); a connection idle past PING_IDLE_S is
    pinged, and one whose session the server ended (a restart, an admin) is replaced without the caller noticing.
    A connection just returned is used as it is: a statement on a dead one raises StoreUnavailable (retry)."""
    from fleet.store import StoreUnavailable
    from fleet.store import engine as engines

    name = "store_ping"
    st = Store(postgres.create_database(name, template="fleet_template"))
    kill = f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    try:
        st.execute("INSERT INTO malformed (topic, count, last_error, last_at) VALUES ('t', 1, 'e', 'x')")
        assert st.rows("SELECT count FROM malformed") == [{"count": 1}]
        monkeypatch.setattr(engines, "PING_IDLE_S", 0.0)
        postgres.admin(kill)
        assert st.rows("SELECT count FROM malformed") == [{"count": 1}]  # pinged, found dead, replaced
        monkeypatch.setattr(engines, "PING_IDLE_S", 3600.0)
        postgres.admin(kill)
        with pytest.raises(StoreUnavailable):
            st.rows("SELECT count FROM malformed")
        assert st.rows("SELECT count FROM malformed") == [{"count": 1}]  # the pool dropped the dead connections
    finally:
        st.close()
        postgres.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
