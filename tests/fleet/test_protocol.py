"""The MQTT contract: every topic in the code is built by fleet.protocol.Topics; topic parsing and the message
schemas round-trip."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from fleet.protocol import (
    ACTIVATION_IN_PROGRESS,
    ACTIVATION_STATES,
    Batch,
    Command,
    Desired,
    ProtocolError,
    Reported,
    Topics,
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
    assert set(ACTIVATION_IN_PROGRESS) < set(ACTIVATION_STATES)


def test_messages_round_trip_with_schema_ids():
    rep = Reported(device="d", active="a@1", activation={"state": "committed"})
    raw = encode(rep)
    assert b'"schema":"shadowline.reported"' in raw and decode("t", raw, Reported) == rep
    cmd = Command(command="rollback")
    assert decode("t", encode(cmd), Command) == cmd
    b = Batch(device="d", kind="events", records=[])
    assert decode("t", encode(b), Batch) == b
    with pytest.raises(ProtocolError, match="t: Desired invalid"):
        decode("t", b'{"schema": "shadowline.desired"}', Desired)
    with pytest.raises(ProtocolError, match="Invalid JSON"):
        decode("t", b"\xff\xfe", Desired)
