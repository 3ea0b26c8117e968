"""The MQTT contract: every topic in the code is built by fleet.protocol.Topics; topic parsing and the message
schemas round-trip."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from edge.agent.statemachine import TRANSITIONS, State
from fleet.protocol import (
    ACTIVATION_IN_PROGRESS,
    RECORD_TYPES,
    ActivationState,
    Batch,
    ClearArgs,
    ClearCommand,
    CommandMessage,
    Desired,
    ProtocolError,
    RecheckCommand,
    RecordKind,
    ReportCommand,
    Reported,
    RollbackArgs,
    RollbackCommand,
    Topics,
    UploadSamplesArgs,
    UploadSamplesCommand,
    decode,
    encode,
)

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fleet", "edge", "export", "hwbench", "shadowline", "benchmarks")
KINDS = "|".join(Topics.DEVICE_TOPICS)
# a literal that looks like (part of) a device topic: "<prefix>/dev/<device>..." or a relative path ending in one
# of the kinds ("x/+/predictions"); URL paths ("/api/..."), file paths ("/proc/self/status") and bare kind names
# (arguments to Topics.device) are not topics
TOPIC_LIKE = re.compile(rf"(^|[^/]/)dev/(\{{\}}|\+|#|[A-Za-z0-9_.-]+)|^/dev/$|^[^/\s]+(/[^/\s]+)*/({KINDS})$")


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def topic_literals(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            if TOPIC_LIKE.search(parts):
                found.append(f"{_rel(path)}:{node.lineno}: f-string {parts!r}")
            for v in node.values:
                skip.add(id(v))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            if TOPIC_LIKE.search(node.value) and " " not in node.value:
                found.append(f"{_rel(path)}:{node.lineno}: {node.value!r}")
    return found


def test_every_topic_is_built_by_topics():
    offenders = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path == ROOT / "fleet" / "protocol.py":
                continue
            offenders += topic_literals(path)
    assert not offenders, "build topics with fleet.protocol.Topics:\n" + "\n".join(offenders)


def test_the_scanner_catches_hand_made_topics(tmp_path):
    bad = ROOT / "fleet" / "_scanner_probe.py"
    try:
        bad.write_text('def f(p, d):\n    """Docstring naming shadowline/dev/x/desired is fine."""\n'
                       '    a = f"{p}/dev/{d}/predictions"\n    b = "shadowline/dev/+/reported"\n'
                       '    c = p + "/dev/" + d + "/cmd"\n    ok = ("/api/status", "status", "/proc/self/status")\n'
                       '    return a, b, c, ok\n')
        assert len(topic_literals(bad)) == 3, topic_literals(bad)
    finally:
        bad.unlink()


def test_topics_build_and_parse():
    t = Topics("acme")
    assert t.device("cam-1", "desired") == "acme/dev/cam-1/desired"
    assert t.all_devices("predictions") == "acme/dev/+/predictions"
    assert t.parse("acme/dev/cam-1/reported") == ("cam-1", "reported")
    for bad in ("acme/dev/cam-1", "other/dev/cam-1/reported", "acme/dev/cam-1/nope", "acme/dev/+/reported",
                "acme/dev/../reported", "acme/dev/cam-1/reported/x"):
        assert t.parse(bad) is None
    with pytest.raises(ValueError):
        t.device("a/b", "desired")
    with pytest.raises(ValueError):
        t.device("cam-1", "secrets")
    with pytest.raises(ValueError):
        Topics("a/#")
    assert set(Topics.FROM_DEVICE) | set(Topics.TO_DEVICE) == set(Topics.DEVICE_TOPICS)
    assert set(RecordKind) == set(RECORD_TYPES) and set(RecordKind) < set(Topics.FROM_DEVICE)


def test_messages_round_trip_with_schema_ids():
    rep = Reported(device="d", active="a@1", activation={"state": "committed"})
    raw = encode(rep)
    assert b'"schema":"shadowline.reported"' in raw and decode("t", raw, Reported) == rep
    cmd = RollbackCommand()
    assert decode("t", encode(cmd), CommandMessage).root == cmd
    b = Batch(device="d", kind="events", records=[])
    assert decode("t", encode(b), Batch) == b
    with pytest.raises(ProtocolError, match="t: Desired invalid"):
        decode("t", b'{"schema": "shadowline.desired"}', Desired)
    with pytest.raises(ProtocolError, match="Invalid JSON"):
        decode("t", b"\xff\xfe", Desired)


def test_one_activation_state_enum():
    """The state machine runs the protocol's enum; the steps are exactly the states a device waits in."""
    assert State is ActivationState
    steps = {s for s in TRANSITIONS if s not in (State.ROLLBACK, State.FAILED)}
    assert steps == set(ACTIVATION_IN_PROGRESS)
    assert State.COMMITTED not in TRANSITIONS and all(State.COMMITTED not in t for t in TRANSITIONS.values())
    assert [s for s in ActivationState if s.in_progress] == [s for s in ActivationState if s in ACTIVATION_IN_PROGRESS]


# what the agent put on the wire before `activation` was typed (a plain dict built in the agent)
OLD_REPORTED = (b'{"schema":"shadowline.reported","version":1,"device":"cam-1","active":"pcb@2","candidate":null,'
                b'"cached":["pcb@2","pcb@1"],"desired_revision":2,"activation":{"state":"committed",'
                b'"source":"desired","chain":["download","verify","prepare","check","activate","commit","idle"],'
                b'"steps":6,"times":{"download":0.12,"verify":0.03,"prepare":0.4,"check":0.2,"activate":0.01,'
                b'"commit":0.002},"skipped":[],"target":"pcb@2","previous":"pcb@1","committed":"pcb@2",'
                b'"target_revision":2},"last_error":null,"backends":["onnxruntime"],"hardware":{},'
                b'"updated_at":"2026-11-01T10:00:00.000+00:00"}')


def test_reported_activation_typed_and_wire_compatible():
    rep = decode("t", OLD_REPORTED, Reported)
    a = rep.activation
    assert a.state is ActivationState.COMMITTED and a.chain[0] is ActivationState.DOWNLOAD
    assert a.times[ActivationState.PREPARE] == 0.4 and a.target == "pcb@2" and a.target_revision == 2
    # re-encoded, the wire form is the one old fleets read
    assert json.loads(encode(rep)) == json.loads(OLD_REPORTED)
    # the smallest reports old devices sent still parse
    assert decode("t", b'{"device":"d","activation":{}}', Reported).activation.state is ActivationState.IDLE
    assert decode("t", b'{"device":"d","activation":{"state":"download"}}', Reported).activation.state.in_progress
    for bad, where in ((b'{"device":"d","activation":{"state":"exploded"}}', "state"),
                       (b'{"device":"d","activation":{"state":"idle","chain":["nope"]}}', "chain"),
                       (b'{"device":"d","activation":{"state":"idle","root":true}}', "root"),
                       (b'{"device":"d","activation":"committed"}', "activation")):
        with pytest.raises(ProtocolError, match=where):
            decode("t", bad, Reported)


def test_commands_are_a_discriminated_union_with_typed_args():
    for cmd in (RollbackCommand(), RollbackCommand(args=RollbackArgs(release="pcb@1")),
                ClearCommand(args=ClearArgs(revision=7)), RecheckCommand(), ReportCommand(),
                UploadSamplesCommand(args=UploadSamplesArgs(limit=3, url="https://fleet.example/upload"))):
        raw = encode(cmd)
        assert json.loads(raw)["command"] == cmd.command and json.loads(raw)["schema"] == "shadowline.cmd"
        assert decode("t", raw, CommandMessage).root == cmd
    # the wire form before the union: args as a plain object, and `clear` sent as a rollback with {"to": null}
    old = decode("t", b'{"schema":"shadowline.cmd","version":1,"id":"c1","command":"rollback",'
                      b'"args":{"to":null,"revision":5},"issued_at":"2026-11-01T10:00:00.000+00:00"}', CommandMessage)
    assert isinstance(old.root, ClearCommand) and old.root.args.revision == 5 and old.root.id == "c1"
    old = decode("t", b'{"command":"upload_samples","args":{"limit":2}}', CommandMessage)
    assert isinstance(old.root, UploadSamplesCommand) and old.root.args.limit == 2 and old.root.args.url is None
    assert isinstance(decode("t", b'{"command":"recheck","args":{}}', CommandMessage).root, RecheckCommand)
    for bad, where in ((b'{"command":"format-disk"}', "format-disk"),
                       (b'{"args":{}}', "command"),
                       (b'{"command":"rollback","args":{"to":"pcb@1"}}', "args.to"),
                       (b'{"command":"rollback","args":{"release":"a@1","force":true}}', "force"),
                       (b'{"command":"clear","args":{}}', "revision"),
                       (b'{"command":"upload_samples","args":{"limit":0}}', "limit"),
                       (b'{"command":"upload_samples","args":{"url":"file:///etc/passwd"}}', "url"),
                       (b'{"command":"recheck","args":{"x":1}}', "x"),
                       (b'[1,2]', "CommandMessage"),
                       (b'\xff', "CommandMessage|JSON")):
        with pytest.raises(ProtocolError, match=where):
            decode("cmd-topic", bad, CommandMessage)


def test_record_kinds_one_enum():
    for kind in RecordKind:
        b = decode("t", encode(Batch(device="d", kind=kind, records=[])), Batch)
        assert b.kind is kind and f"{kind}" == kind.value and str(kind) == kind.value
        assert Topics().device("d", kind).endswith(f"/{kind.value}")
    assert decode("t", b'{"device":"d","kind":"events","records":[]}', Batch).kind is RecordKind.EVENTS
    with pytest.raises(ProtocolError, match="kind"):
        decode("t", b'{"device":"d","kind":"secrets","records":[]}', Batch)


def test_message_validators_are_built_at_first_use_and_safely_from_many_threads():
    """The protocol's message types are deferred (the device imports this module at start and uses most types only
    at its first frame or with the fleet); their first use from eight threads at once, in a fresh interpreter, gives
    every thread a working validator: each valid message is accepted and each bad one refused by the real rules."""
    import subprocess
    import sys

    code = """
import json, sys, threading
import fleet.protocol as p
deferred = [not p.PredictionRecord.__pydantic_complete__, not p.CommandMessage.__pydantic_complete__,
            not p.Batch.__pydantic_complete__]
start = threading.Barrier(8)
results = []
def use(i):
    start.wait()
    ok = p.PredictionRecord(device='d', source='http', release='r', revision=1, mode='shadow', decision='pass')
    cmd = p.CommandMessage.model_validate({'command': 'report', 'id': f'c{i}'}).root
    try:
        p.PredictionRecord(device='d', source='http', release='r', revision=1, mode='nope', decision='pass')
        refused = False
    except p.ValidationError:
        refused = True
    results.append((ok.mode, type(cmd).__name__, cmd.id == f'c{i}', refused))
threads = [threading.Thread(target=use, args=(i,)) for i in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps({"deferred": deferred, "results": results}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["deferred"] == [True, True, True]
    assert got["results"] == [["shadow", "ReportCommand", True, True]] * 8
