"""Desired state per device: the full release spec(s) plus artifact URLs and hashes, published retained with QoS 1
on the device's `desired` topic, and recorded with a per-device monotonic revision (devices ignore older ones).
Every desired state and command is signed with the fleet's control key (fleet.control): devices act on nothing
else."""

from __future__ import annotations

from collections.abc import Callable

from fleet.control import ControlSigner
from fleet.protocol import Artifact, ClearArgs, ClearCommand, Command, Desired, ReleaseSpec, Topics, encode, now_iso
from fleet.registry import Registry
from fleet.releases import Releases
from fleet.store import Store

# publish(topic, payload, retain) -> returns once the broker acknowledged (QoS 1)
Publish = Callable[[str, bytes, bool], None]
# publish_many([(topic, payload, retain), ...]): publish all, then wait until the broker acknowledged all
PublishMany = Callable[[list[tuple[str, bytes, bool]]], None]


class DesiredStates:
    def __init__(self, store: Store, registry: Registry, releases: Releases, topics: Topics, public_url: str,
                 publish: Publish, publish_many: PublishMany | None = None, *, signer: ControlSigner) -> None:
        self.store, self.registry, self.releases, self.topics = store, registry, releases, topics
        self.signer = signer
        self.public_url = public_url.rstrip("/")
        self.publish = publish
        self.publish_many: PublishMany = publish_many or self._one_by_one

    def _one_by_one(self, messages: list[tuple[str, bytes, bool]]) -> None:
        for m in messages:
            self.publish(*m)

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

    def current_many(self, devices: list[str]) -> dict[str, tuple[str | None, str | None]]:
        """`current` of many devices: one read per 500 devices; a device never asked anything is absent."""
        return {r["device"]: (r["release"], r["candidate"])
                for r in self._by_device("SELECT device, release, candidate FROM desired", devices)}

    def _by_device(self, select: str, devices: list[str]) -> list[dict]:
        out: list[dict] = []
        for i in range(0, len(devices), 500):
            part = devices[i:i + 500]
            out += self.store.rows(f"{select} WHERE device IN ({', '.join('?' * len(part))})", part)
        return out

    def set(self, device: str, release: str | None, candidate: str | None = None,
            rollout: str | None = None) -> Desired | None:
        """Ask `device` to run `release` (+ `candidate` in shadow). `release=None` clears the retained desired
        state and sends a `clear` command: the device has nothing earlier from this fleet to return to."""
        return self.set_many([(device, release, candidate)], rollout)[0]

    def set_many(self, changes: list[tuple[str, str | None, str | None]],
                 rollout: str | None = None) -> list[Desired | None]:
        """`set` for many devices at once: one transaction, then every message published before waiting for
        the acknowledgements (a rollback of a hundred devices is one round of PUBACKs, not a hundred)."""
        specs: dict[str, ReleaseSpec] = {}
        arts: dict[tuple[str | None, str | None], list[Artifact]] = {}

        def spec_of(ref: str | None) -> ReleaseSpec | None:
            if ref and ref not in specs:
                specs[ref] = self.releases.get(ref)
            return specs.get(ref) if ref else None

        out: list[Desired | None] = []
        messages: list[tuple[str, bytes, bool]] = []
        desired: list[dict] = []
        history: list[dict] = []
        with self.store.transaction() as st:
            # the devices' current revisions in one read per 500 devices, and the rows written in two batched
            # statements, not a round trip per device: a rollback of hundreds holds the write lock (which status
            # ingest also takes on SQLite) as briefly as possible
            current = {r["device"]: r["revision"]
                       for r in self._by_device("SELECT device, revision FROM desired", [c[0] for c in changes])}
            for device, release, candidate in changes:
                spec, cand = spec_of(release), spec_of(candidate)
                revision = current.get(device, 0) + 1
                current[device] = revision
                now = now_iso()
                msg = None
                if spec is not None:
                    if (release, candidate) not in arts:
                        arts[(release, candidate)] = self.artifacts(spec, cand)
                    msg = self.signer.desired(Desired(device=device, revision=revision, release=spec,
                                                      candidate=cand, artifacts=arts[(release, candidate)],
                                                      rollout=rollout, issued_at=now))
                payload = encode(msg) if msg else b""
                desired.append({"device": device, "revision": revision, "release": release,
                                "candidate": candidate, "rollout": rollout,
                                "payload": payload.decode() if msg else None, "issued_at": now})
                history.append({"device": device, "revision": revision, "release": release,
                                "candidate": candidate, "rollout": rollout, "issued_at": now})
                messages.append((self.topics.device(device, "desired"), payload, True))
                if msg is None:
                    cmd = self.signer.command(ClearCommand(args=ClearArgs(revision=revision)), device)
                    messages.append((self.topics.device(device, "cmd"), encode(cmd), False))
                out.append(msg)
            st.upsert_many("desired", desired, pk="device")
            st.upsert_many("desired_history", history, pk=("device", "revision"))
        # Published after the commit (of the caller's transaction, when this joins one, e.g. a wave start): if the
        # broker is down, or this process dies first, the stored states are republished by republish().
        self.store.after_commit(lambda: self.publish_many(messages))
        return out

    def revision(self, device: str) -> int:
        row = self.store.get("desired", device)
        return row["revision"] if row else 0

    def send_command(self, device: str, command: Command) -> Command:
        """Sign `command` for `device` (expiry, the device's id) and publish it (QoS 1, not retained)."""
        signed = self.signer.command(command, device)
        self.publish(self.topics.device(device, "cmd"), encode(signed), False)
        return signed

    def republish(self) -> int:
        """Publish every stored desired state again (retained, idempotent on the device by revision): run on
        every (re)connection so a state stored while the broker was away still reaches it. A state stored
        unsigned (before signing) or under an earlier control key is signed again with the current key (same
        revision, same content)."""
        rows = self.store.rows("SELECT device, payload FROM desired")
        self.publish_many([(self.topics.device(r["device"], "desired"), self._signed(r["payload"]), True)
                           for r in rows])
        return len(rows)

    def _signed(self, payload: str | None) -> bytes:
        if not payload:
            return b""
        if f'"signature":{{"algorithm":"ed25519","key_id":"{self.signer.key_id}",' in payload:
            return payload.encode()  # as stored by this key (encode()'s compact form): no parse on every reconnect
        msg = Desired.model_validate_json(payload)
        if msg.signature is not None and msg.signature.key_id == self.signer.key_id:
            return payload.encode()
        return encode(self.signer.desired(msg))
