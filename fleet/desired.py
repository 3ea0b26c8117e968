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
        with self.store.transaction() as st:
            # the devices' current revisions in one read per 500 devices, not one per device: a rollback of
            # hundreds holds the write lock (which status ingest also takes) as briefly as possible
            current: dict[str, int] = {}
            devices = [c[0] for c in changes]
            for i in range(0, len(devices), 500):
                part = devices[i:i + 500]
                current.update((r["device"], r["revision"]) for r in st.rows(
                    f"SELECT device, revision FROM desired WHERE device IN ({', '.join('?' * len(part))})", part))
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
                st.upsert("desired", {"device": device, "revision": revision, "release": release,
                                      "candidate": candidate, "rollout": rollout,
                                      "payload": payload.decode() if msg else None, "issued_at": now},
                          pk="device")
                st.upsert("desired_history", {"device": device, "revision": revision, "release": release,
                                              "candidate": candidate, "rollout": rollout, "issued_at": now},
                          pk=("device", "revision"))
                messages.append((self.topics.device(device, "desired"), payload, True))
                if msg is None:
                    cmd = self.signer.command(ClearCommand(args=ClearArgs(revision=revision)), device)
                    messages.append((self.topics.device(device, "cmd"), encode(cmd), False))
                out.append(msg)
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
