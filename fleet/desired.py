"""Desired state per device: the full release spec(s) plus artifact URLs and hashes, published retained with QoS 1
on the device's `desired` topic, and recorded with a per-device monotonic revision (devices ignore older ones)."""

from __future__ import annotations

from collections.abc import Callable

from fleet.protocol import Artifact, Command, Desired, ReleaseSpec, Topics, encode, now_iso
from fleet.registry import Registry
from fleet.releases import Releases
from fleet.store import Store

# publish(topic, payload, retain) -> returns once the broker acknowledged (QoS 1)
Publish = Callable[[str, bytes, bool], None]


class DesiredStates:
    def __init__(self, store: Store, registry: Registry, releases: Releases, topics: Topics, public_url: str,
                 publish: Publish) -> None:
        self.store, self.registry, self.releases, self.topics = store, registry, releases, topics
        self.public_url = public_url.rstrip("/")
        self.publish = publish

    def artifacts(self, *specs: ReleaseSpec | None) -> list[Artifact]:
        out: dict[str, Artifact] = {}
        for spec in specs:
            for stage in (spec.stages if spec else []):
                b = self.registry.get(stage.bundle)
                out[b["id"]] = Artifact(bundle=b["id"], url=f"{self.public_url}/artifacts/{b['path']}",
                                        sha256=b["sha256"], size=b["size"])
        return list(out.values())

    def current(self, device: str) -> tuple[str | None, str | None]:
        """(release ref, candidate ref) the fleet last asked `device` to run."""
        row = self.store.get("desired", device)
        return (row["release"], row["candidate"]) if row else (None, None)

    def set(self, device: str, release: str | None, candidate: str | None = None,
            rollout: str | None = None) -> Desired | None:
        """Ask `device` to run `release` (+ `candidate` in shadow). `release=None` clears the retained desired
        state and sends a `rollback` command: the device has nothing earlier from this fleet to return to."""
        spec = self.releases.get(release) if release else None
        cand = self.releases.get(candidate) if candidate else None
        with self.store.transaction() as st:
            row = st.get("desired", device)
            revision = (row["revision"] if row else 0) + 1
            now = now_iso()
            msg = None
            if spec is not None:
                msg = Desired(device=device, revision=revision, release=spec, candidate=cand,
                              artifacts=self.artifacts(spec, cand), rollout=rollout, issued_at=now)
            st.upsert("desired", {"device": device, "revision": revision, "release": release,
                                  "candidate": candidate, "rollout": rollout,
                                  "payload": encode(msg).decode() if msg else None, "issued_at": now}, pk="device")
            st.upsert("desired_history", {"device": device, "revision": revision, "release": release,
                                          "candidate": candidate, "rollout": rollout, "issued_at": now},
                      pk=("device", "revision"))
        # Published after the commit: if the broker is down the stored state is republished by republish().
        topic = self.topics.device(device, "desired")
        if msg is not None:
            self.publish(topic, encode(msg), True)
        else:
            self.publish(topic, b"", True)
            self.publish(self.topics.device(device, "cmd"),
                         encode(Command(command="rollback", args={"to": None, "revision": revision})), False)
        return msg

    def revision(self, device: str) -> int:
        row = self.store.get("desired", device)
        return row["revision"] if row else 0

    def republish(self) -> int:
        """Publish every stored desired state again (retained, idempotent on the device by revision): run on
        every (re)connection so a state stored while the broker was away still reaches it."""
        n = 0
        for row in self.store.rows("SELECT device, payload FROM desired"):
            topic = self.topics.device(row["device"], "desired")
            self.publish(topic, row["payload"].encode() if row["payload"] else b"", True)
            n += 1
        return n
