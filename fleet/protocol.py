"""The MQTT contract between fleet and devices: topics, versioned message schemas. The only module of fleet/ the
device side imports (DESIGN.md). Every message is JSON with `schema` and `version`; every record has a UUID so
ingest is idempotent."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Any, Literal, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, model_validator

from runtime.errors import SignatureError
from runtime.signing import TrustStore, sign_document

PROTOCOL_VERSION = 1
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# Payloads of the retained `status` topic (plain text, not JSON): the device publishes `online` on connect and
# sets `offline` as its last will.
STATUS_ONLINE, STATUS_OFFLINE = "online", "offline"


class _StrEnum(str, Enum):
    """A str enum that formats as its value on every Python version (3.11 changed `format()` of mixed-in enums),
    so it can go into topics, SQL parameters and JSON as the plain string the wire carries."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class ActivationState(_StrEnum):
    """The device's activation state machine (edge/agent/statemachine.py runs it; defined here because the fleet
    reads it in `Reported.activation.state` and fleet/ cannot import edge/). The machine moves through IDLE and the
    steps; COMMITTED is never entered: it is what a device reports while idle after a successful activation (and
    FAILED while idle after a failed one). While a device is in one of IN_PROGRESS the fleet waits; COMMITTED with
    `active` equal to the target means success; FAILED or ROLLBACK (with `desired_revision` at or past the revision
    the fleet sent) means the device refused the release and is back on its previous one, `last_error` saying why."""

    IDLE = "idle"
    DOWNLOAD = "download"
    VERIFY = "verify"
    PREPARE = "prepare"
    CHECK = "check"
    ACTIVATE = "activate"
    COMMIT = "commit"
    ROLLBACK = "rollback"
    FAILED = "failed"
    COMMITTED = "committed"

    @property
    def in_progress(self) -> bool:
        return self in ACTIVATION_IN_PROGRESS


ACTIVATION_IN_PROGRESS: frozenset[ActivationState] = frozenset({
    ActivationState.DOWNLOAD, ActivationState.VERIFY, ActivationState.PREPARE, ActivationState.CHECK,
    ActivationState.ACTIVATE, ActivationState.COMMIT})


class ActivationSource(_StrEnum):
    """What started an activation: a desired state, or a fleet command."""

    DESIRED = "desired"
    ROLLBACK = "cmd:rollback"
    RECHECK = "cmd:recheck"


class RecordKind(_StrEnum):
    """The kinds of record a device sends in batches, each on its own topic: the edge outbox, fleet ingest and
    validation all key on this enum (RECORD_TYPES maps each to its record model)."""

    PREDICTIONS = "predictions"
    REVIEWS = "reviews"
    METRICS = "metrics"
    ALERTS = "alerts"
    EVENTS = "events"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_id() -> str:
    return str(uuid.uuid4())


# -- topics -----------------------------------------------------------------------------------------------------
class Topics:
    """Every topic the system uses, built from a fleet prefix and a device id. Nothing else formats topics."""

    DEVICE_TOPICS = ("desired", "reported", "status", "predictions", "reviews", "metrics", "alerts", "cmd", "events",
                     "acks")
    # `acks` extends DESIGN.md's topic table: the fleet's commit acknowledgements of record batches (`Ack`)
    TO_DEVICE = ("desired", "cmd", "acks")
    FROM_DEVICE = ("reported", "status", "predictions", "reviews", "metrics", "alerts", "events")
    RETAINED = ("desired", "reported", "status")

    def __init__(self, prefix: str = "shadowline") -> None:
        if not prefix or any(c in prefix for c in "+#") or prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(f"invalid MQTT topic prefix {prefix!r}")
        self.prefix = prefix

    def device(self, device_id: str, kind: str) -> str:
        if kind not in self.DEVICE_TOPICS:
            raise ValueError(f"unknown device topic {kind!r}")
        if not DEVICE_ID_RE.match(device_id):
            raise ValueError(f"invalid device id {device_id!r}")
        return f"{self.prefix}/dev/{device_id}/{kind}"

    def all_devices(self, kind: str) -> str:
        """Subscription filter for one kind of message from every device."""
        if kind not in self.DEVICE_TOPICS:
            raise ValueError(f"unknown device topic {kind!r}")
        return f"{self.prefix}/dev/+/{kind}"

    # fleet-level topics: published by the fleet service itself, about the whole fleet (never from a device)
    FLEET_TOPICS = ("alerts",)

    def fleet(self, kind: str) -> str:
        """A fleet-level topic, e.g. `{prefix}/fleet/alerts` (alerts the fleet service raised and cleared)."""
        if kind not in self.FLEET_TOPICS:
            raise ValueError(f"unknown fleet topic {kind!r}")
        return f"{self.prefix}/fleet/{kind}"

    def parse(self, topic: str) -> tuple[str, str] | None:
        """(device id, kind) of a device topic under this prefix, or None."""
        parts = topic.split("/")
        if len(parts) != 4 or parts[0] != self.prefix or parts[1] != "dev" or parts[3] not in self.DEVICE_TOPICS:
            return None
        if not DEVICE_ID_RE.match(parts[2]):
            return None
        return parts[2], parts[3]


# -- records ----------------------------------------------------------------------------------------------------
class _Msg(BaseModel):
    # Validators are built at a message type's first use, not at import: the device imports this module at start and
    # validates a few of its types there (ReleaseSpec through the device config), the rest at its first frame or
    # only with the fleet; building them all took ~15 ms of its start. A first use from two threads at once is safe
    # with pydantic >= 2.14 (it rebuilds under a lock; pyproject requires it).
    model_config = ConfigDict(extra="forbid", defer_build=True)


class StageOutput(_Msg):
    role: Literal["screen", "verify"]
    bundle: str
    scores: dict[str, float] | None = None
    detections: list[dict[str, Any]] | None = None
    hits: list[tuple[str, float]] = Field(default_factory=list, description="classes at/over their threshold")
    latency_ms: float = 0.0
    variant: str | None = Field(None, description="model variant that ran: fp32, fp16, int8-cpu, int8, tensorrt-<p>")


class PredictionRecord(_Msg):
    id: str = Field(default_factory=new_id)
    device: str
    created_at: str = Field(default_factory=now_iso)
    source: str = Field(description="folder:<file>, capture:<url>#<frame>, http")
    release: str
    revision: int
    mode: Literal["shadow", "production"]
    role: Literal["active", "candidate"] = "active"
    models: dict[str, str] = Field(default_factory=dict, description="stage role -> bundle id")
    thresholds: dict[str, Any] = Field(default_factory=dict, description="thresholds in effect")
    stages: list[StageOutput] = Field(default_factory=list)
    decision: Literal["pass", "flag", "error"]
    flagged: list[tuple[str, float]] = Field(default_factory=list)
    top_label: str | None = None
    top_score: float | None = None
    latency_ms: dict[str, float] = Field(default_factory=dict, description="per stage plus total")
    error: str | None = None
    disagrees_with: str | None = Field(None, description="candidate record: id of the active record it differs from")
    image_kept: bool = False
    degraded: str | None = Field(None, description="why the device could not decide normally (verify_timeout, "
                                 "verify_stalled, verify_failed): the frame is flagged for review, never passed")


class ReviewRecord(_Msg):
    id: str = Field(default_factory=new_id)
    prediction_id: str
    device: str
    created_at: str = Field(default_factory=now_iso)
    inspector: str
    verdict: Literal["confirm", "false_positive", "missed_defect", "bad_image"]
    defect_class: str | None = None
    override: bool = Field(description="the verdict disagrees with the model's decision")
    model_decision: Literal["pass", "flag", "error"]
    release: str
    revision: int
    models: dict[str, str] = Field(default_factory=dict)
    thresholds: dict[str, Any] = Field(default_factory=dict)
    top_label: str | None = None
    top_score: float | None = None
    note: str = ""


class MetricsRecord(_Msg):
    """A device's health over one window of `window_s` seconds ending at `created_at`. `values` keys (all floats;
    a key is absent where the platform has no such reading): `queue_depth` (frames waiting at the end of the
    window: what the fleet's queue_growing rule reads), `queue_depth_max`, `queue_capacity`, `in_flight`, `frames`,
    `frames_per_s`, `dropped`, `rejected`, `errors`, `degraded` (counts within the window), `latency_ms_p50:<stage>`
    and `latency_ms_p95:<stage>` (decode, screen, verify, total, queue_wait, ...), `rss_bytes`, `cpu_percent`
    (of one core), `temp_c:<zone>` and `power_mw:<rail>` (tegrastats on a Jetson, thermal zones elsewhere)."""

    id: str = Field(default_factory=new_id)
    device: str
    created_at: str = Field(default_factory=now_iso)
    release: str
    revision: int
    window_s: float
    values: dict[str, float]


class AlertRecord(_Msg):
    id: str = Field(default_factory=new_id)
    device: str
    created_at: str = Field(default_factory=now_iso)
    rule: str
    state: Literal["raised", "cleared"]
    value: float | None = None
    threshold: float | None = None
    message: str = ""
    severity: Literal["critical", "warning", "info"] | None = Field(
        None, description="set by the fleet from its alerting config when it stores the alert; devices leave it out")


class EventRecord(_Msg):
    """An activation step, an action delivery, an outbox overflow: anything the fleet should see happen."""

    id: str = Field(default_factory=new_id)
    device: str
    created_at: str = Field(default_factory=now_iso)
    kind: str
    detail: dict[str, Any] = Field(default_factory=dict)


# -- envelopes --------------------------------------------------------------------------------------------------
class Batch(_Msg):
    """Device -> fleet: a batch of records of one kind (predictions, reviews, metrics, alerts, events)."""

    schema_id: Literal["shadowline.batch"] = Field("shadowline.batch", alias="schema")
    version: int = PROTOCOL_VERSION
    device: str
    kind: RecordKind
    sent_at: str = Field(default_factory=now_iso)
    records: list[dict[str, Any]]

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


ACK_MAX_IDS = 10_000  # ids per `Ack` message (the fleet splits larger acknowledgements)


class Ack(_Msg):
    """Fleet -> device, on `{prefix}/dev/{device}/acks` (QoS 1, not retained): the records of this device's batches
    the fleet has decided on, by record id, sent after the transaction holding them committed. `stored`: in the
    fleet's store (inserted now, or already there: a redelivery); `refused`: refused by ingest validation, never to
    be stored (counted by reason on the fleet). The device deletes an outbox row only once its id is in either
    list, and sends rows again that no ack named within its timeout: delivery survives a broker that acknowledged a
    publish and died before writing it. Ids the device does not know are ignored (a duplicate ack)."""

    schema_id: Literal["shadowline.ack"] = Field("shadowline.ack", alias="schema")
    version: int = PROTOCOL_VERSION
    device: str
    stored: list[str] = Field(default_factory=list, max_length=ACK_MAX_IDS, description="record ids committed")
    refused: list[str] = Field(default_factory=list, max_length=ACK_MAX_IDS,
                               description="record ids refused by validation (never stored)")
    sent_at: str = Field(default_factory=now_iso)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


RECORD_TYPES: dict[RecordKind, type[_Msg]] = {
    RecordKind.PREDICTIONS: PredictionRecord, RecordKind.REVIEWS: ReviewRecord, RecordKind.METRICS: MetricsRecord,
    RecordKind.ALERTS: AlertRecord, RecordKind.EVENTS: EventRecord}


class StageSpec(_Msg):
    role: Literal["screen", "verify"]
    bundle: str = Field(description="bundle id name-vX.Y")
    candidate_classes: list[str] | None = Field(None, description="screen: classes that make a frame a candidate")
    threshold: float | None = Field(None, ge=0, le=1, description="screen: one threshold for candidate classes")
    thresholds: dict[str, float] | None = Field(None, description="verify: {default: t, class: t, ...}")
    precision: Literal["auto", "fp32", "fp16", "int8"] | None = Field(
        None, description="model variant: auto = the fastest that passes parity on the device; unset = the device's "
                          "runner setting (FP32 on ONNX Runtime)")


class ReleaseSpec(_Msg):
    name: str
    revision: int = 0
    mode: Literal["shadow", "production"] = "shadow"
    stages: list[StageSpec] = Field(min_length=1, max_length=2)
    actions: list[Literal["work_order_mqtt", "webhook"]] = Field(default_factory=list)
    note: str = ""

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.revision}"


class Artifact(_Msg):
    bundle: str
    url: str = Field(description="HTTP(S) URL of the bundle .tar")
    sha256: str
    size: int


class MessageSignature(_Msg):
    """The fleet's ed25519 signature of a control message (desired state, command): over the canonical JSON
    (runtime.signing.canonical_json) of the whole message without this field, made with the fleet's control key
    (never a bundle-signing key). Devices act only on messages signed by a key in their `fleet.fleet_keys`."""

    algorithm: Literal["ed25519"] = "ed25519"
    key_id: str = Field(description="first 16 hex digits of sha256 of the raw public key")
    signature: str = Field(description="base64")


class Desired(_Msg):
    schema_id: Literal["shadowline.desired"] = Field("shadowline.desired", alias="schema")
    version: int = PROTOCOL_VERSION
    device: str
    revision: int = Field(description="monotonic per device; older desired states are ignored")
    release: ReleaseSpec
    candidate: ReleaseSpec | None = None
    artifacts: list[Artifact]
    issued_at: str = Field(default_factory=now_iso)
    rollout: str | None = None
    signature: MessageSignature | None = Field(None, description="the fleet's signature (sign_message)")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Activation(_Msg):
    """`Reported.activation`: where the device's activation state machine is, and what its last activation did."""

    state: ActivationState = ActivationState.IDLE
    source: ActivationSource = ActivationSource.DESIRED
    chain: list[ActivationState] = Field(default_factory=list, description="states entered, in order")
    steps: int = Field(0, ge=0, description="steps entered in this activation")
    times: dict[ActivationState, float] = Field(default_factory=dict, description="seconds per step")
    skipped: list[ActivationState] = Field(default_factory=list, description="steps not needed (cached release)")
    target: str | None = Field(None, description="release key name@revision being (or last) activated")
    previous: str | None = Field(None, description="the committed release when the activation began")
    committed: str | None = Field(None, description="the release the device runs after its last commit")
    target_revision: int | None = Field(None, description="desired revision of the target")


class Reported(_Msg):
    schema_id: Literal["shadowline.reported"] = Field("shadowline.reported", alias="schema")
    version: int = PROTOCOL_VERSION
    device: str
    active: str | None = Field(None, description="release ref name@revision")
    candidate: str | None = None
    cached: list[str] = Field(default_factory=list, description="last releases ready on disk")
    desired_revision: int | None = None
    activation: Activation = Field(default_factory=Activation)
    last_error: str | None = None
    backends: list[str] = Field(default_factory=list)
    hardware: dict[str, Any] = Field(default_factory=dict)
    updated_at: str = Field(default_factory=now_iso)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _CommandBase(_Msg):
    schema_id: Literal["shadowline.cmd"] = Field("shadowline.cmd", alias="schema")
    version: int = PROTOCOL_VERSION
    id: str = Field(default_factory=new_id)
    issued_at: str = Field(default_factory=now_iso)
    device: str | None = Field(None, description="the device it is for (signed: a command for one device is "
                                                 "refused by every other)")
    nonce: str = Field(default_factory=lambda: uuid.uuid4().hex, description="unique per command: a device "
                       "refuses a nonce it has seen (replay)")
    expires_at: str | None = Field(None, description="a device refuses the command after this time (UTC ISO 8601)")
    signature: MessageSignature | None = Field(None, description="the fleet's signature (sign_message)")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class NoArgs(_Msg):
    """A command without arguments (`args` is `{}` on the wire)."""


class RollbackArgs(_Msg):
    release: str | None = Field(None, description="a cached release key name@revision; unset: the release "
                                                   "committed before the current one")


class RollbackCommand(_CommandBase):
    """Return to an earlier release from the device's cache (no download)."""

    command: Literal["rollback"] = "rollback"
    args: RollbackArgs = Field(default_factory=RollbackArgs)

    @model_validator(mode="before")
    @classmethod
    def _legacy_clear(cls, data: Any) -> Any:
        if isinstance(data, dict) and "to" in (data.get("args") or {}):
            raise ValueError("a rollback with args.to is the old form of the 'clear' command; parse it with "
                             "CommandMessage")
        return data


class ClearArgs(_Msg):
    revision: int = Field(ge=0, description="the desired revision at which the fleet cleared this device's "
                                            "desired state")


class ClearCommand(_CommandBase):
    """The fleet cleared this device's desired state and has no earlier release for it: the device keeps running
    what it runs and takes `args.revision` as handled. (Fleets before this command sent it as `rollback` with
    `args = {"to": null, "revision": N}`; CommandMessage still reads that form.)"""

    command: Literal["clear"] = "clear"
    args: ClearArgs


class UploadSamplesArgs(_Msg):
    limit: int = Field(8, ge=1, le=1000, description="recent images to send")
    url: str | None = Field(None, pattern=r"^https?://", description="POST each image there (multipart); unset: "
                                                                     "list them in a `samples` event only")


class UploadSamplesCommand(_CommandBase):
    command: Literal["upload_samples"] = "upload_samples"
    args: UploadSamplesArgs = Field(default_factory=UploadSamplesArgs)


class RecheckCommand(_CommandBase):
    """Run prepare and check again on the committed release (no cache shortcut)."""

    command: Literal["recheck"] = "recheck"
    args: NoArgs = Field(default_factory=NoArgs)


class ReportCommand(_CommandBase):
    """Publish the reported state now."""

    command: Literal["report"] = "report"
    args: NoArgs = Field(default_factory=NoArgs)


Command = Annotated[RollbackCommand | ClearCommand | UploadSamplesCommand | RecheckCommand | ReportCommand,
                    Field(discriminator="command")]


class CommandMessage(RootModel):
    """The `cmd` topic's payload: one of the commands, chosen by its `command` field. Reads the old wire form of
    `clear` (a `rollback` whose args are `{"to": null, "revision": N}`)."""

    # `root` annotated here, not `RootModel[Command]`: the parametrised generic would be a class of its own, built
    # at import (2 ms of every daemon's start) whatever this one defers
    model_config = ConfigDict(defer_build=True)  # as _Msg: built by the agent's first command
    root: Command

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("command") == "rollback":
            args = data.get("args")
            if isinstance(args, dict) and "to" in args:
                if args["to"] is not None:
                    raise ValueError("rollback args.to: only null (the old form of 'clear') is known")
                data = {**data, "command": "clear", "args": {k: v for k, v in args.items() if k != "to"}}
        return data


_SignedT = TypeVar("_SignedT", bound=_Msg)


def sign_message(msg: _SignedT, key: Ed25519PrivateKey) -> _SignedT:
    """`msg` with the fleet's signature over every other field (canonical JSON as it travels)."""
    doc = msg.model_dump(mode="json", by_alias=True, exclude={"signature"})
    return msg.model_copy(update={"signature": MessageSignature.model_validate(sign_document(doc, key))})


def verify_message(topic: str, payload: bytes, trust: TrustStore) -> str:
    """Check the signature of a control message as received (the JSON document minus `signature`): the signer's
    key id, or SignatureError naming the problem (unsigned, malformed, unknown key, does not match)."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as err:
        raise SignatureError(f"{topic}: not JSON ({err})") from err
    if not isinstance(doc, dict):
        raise SignatureError(f"{topic}: not a JSON object")
    return trust.verify_document(doc, doc.pop("signature", None), topic)


class ProtocolError(ValueError):
    """A message that does not parse or does not fit its schema; the text names the topic."""


def encode(msg: BaseModel) -> bytes:
    return json.dumps(msg.model_dump(mode="json", by_alias=True), separators=(",", ":")).encode()


M = TypeVar("M", bound=BaseModel)


def decode(topic: str, payload: bytes | bytearray | str, model: type[M]) -> M:
    try:
        return model.model_validate_json(payload)
    except ValidationError as err:
        raise ProtocolError(f"{topic}: {model.__name__} invalid: {err.error_count()} errors, "
                            f"first: {err.errors()[0]['loc']} {err.errors()[0]['msg']}") from err
    except (ValueError, UnicodeDecodeError) as err:
        raise ProtocolError(f"{topic}: not JSON ({err})") from err


def verdict_override(verdict: str, decision: str, flagged: list[str], defect_class: str | None) -> bool:
    """Whether an inspector's verdict disagrees with the model's decision (an override, what the override rate
    counts). Computed from the verdict and the prediction, by the device and again by the fleet, never taken from
    the client. ProtocolError for a verdict that cannot apply to that decision."""
    if verdict == "confirm":
        return False
    if verdict == "false_positive":
        if decision != "flag":
            raise ProtocolError("false_positive needs a flagged prediction; the model did not flag this frame")
        return True
    if verdict == "missed_defect":
        if not defect_class:
            raise ProtocolError("missed_defect needs defect_class")
        return decision != "flag" or defect_class not in flagged
    if verdict == "bad_image":
        return decision != "error"  # the model should not have decided on it
    raise ProtocolError(f"unknown verdict {verdict!r}")
