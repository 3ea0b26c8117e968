"""Every `shadowline` command, driven with bad inputs, fails with a message and a documented exit code: never a
Python traceback, never the "internal error" code that means a bug. The commands are found by walking the CLI, so
a command added later is driven too; its bad inputs are made from its own parameters (a file of junk, a missing
path, a folder where a file belongs, a fleet URL nothing listens on, a required argument left out)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import pytest

from shadowline.cli import EXIT_INTERNAL, EXIT_USAGE, cli, main
from shadowline.clidoc import exit_codes, walk
from tests.conftest import ROOT

LEAVES = [(path, cmd) for path, cmd, _ in walk(cli, ["shadowline"]) if not isinstance(cmd, click.Group)]
URL_OPTIONS = {"url", "fleet_url", "broker", "broker_url", "mqtt"}
SECONDS = 60  # per invocation: a command that waits longer on a bad input is a finding


class Hung(BaseException):
    """Raised by the alarm: not an Exception, so the CLI's handlers cannot turn it into an exit code."""


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    def expire(_sig: int, _frame: object) -> None:
        raise Hung(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again at once: nothing listens there


def is_path(param: click.Parameter) -> bool:
    return isinstance(param.type, (click.Path, click.File))


_fresh = iter(range(1_000_000))


def value_for(param: click.Parameter, kind: str, work: Path, url: str) -> str:
    if param.name in URL_OPTIONS:
        return url
    if is_path(param):
        # a fresh missing path each time: a command may legitimately create what it was given
        missing = work / f"missing-{next(_fresh)}" / "nothing.onnx"
        return str({"junk": work / "junk.bin", "missing": missing, "folder": work}[kind])
    if isinstance(param.type, click.Choice):
        return str(param.type.choices[0])
    if isinstance(param.type, click.types.IntParamType):
        return "1"
    if isinstance(param.type, click.types.FloatParamType):
        return "0.5"
    return "nope"


def _args(params: list[click.Parameter], kind: str, work: Path, url: str) -> list[str]:
    args: list[str] = []
    for p in params:
        if isinstance(p, click.Option) and p.is_flag:
            continue
        values = [value_for(p, kind, work, url) for _ in range(p.nargs if p.nargs > 0 else 1)]
        args += values if isinstance(p, click.Argument) else [p.opts[-1], *values]
    return args


def invocations(path: list[str], cmd: click.Command, work: Path, url: str) -> list[tuple[str, list[str]]]:
    """(label, argv) for each bad input this command can be given: each file or folder parameter in turn gets a
    file of junk, a missing path and a folder (the required parameters get the same kind of value, optional ones
    stay unset so the one under test is the one read); a fleet URL nothing listens on; required ones left out."""
    base = path[1:]
    token = ["--token", "not-a-token"] if any(p.name == "token" for p in cmd.params) else []
    required = [p for p in cmd.params if p.required]
    urls = [p for p in cmd.params if p.name in URL_OPTIONS and not p.required]
    out: list[tuple[str, list[str]]] = []
    if required:
        out.append(("required argument left out", base))
    targets = [p for p in cmd.params if is_path(p)]
    for target in targets:
        for kind in ("junk", "missing", "folder"):
            params = required + urls + ([target] if target not in required else [])
            out.append((f"{target.name}: {kind}", base + _args(params, kind, work, url) + token))
    if not targets and (required or urls):
        out.append(("unknown names", base + _args(required + urls, "junk", work, url) + token))
    return out


@pytest.fixture(scope="module")
def documented() -> set[int]:
    return {code for code, _, _ in exit_codes()}


@pytest.mark.parametrize("path,cmd", LEAVES, ids=[" ".join(p[1:]) for p, _ in LEAVES])
def test_command_refuses_bad_inputs_without_a_traceback(path, cmd, tmp_path, capfd, monkeypatch, documented):
    work = tmp_path / "work"
    work.mkdir()
    (work / "junk.bin").write_bytes(os.urandom(2048))
    monkeypatch.chdir(tmp_path)  # whatever a command writes by default lands here
    monkeypatch.setenv("SHADOWLINE_FLEET_TOKEN", "not-a-token")
    url = f"http://127.0.0.1:{dead_port()}"
    for label, argv in invocations(path, cmd, work, url):
        with deadline(SECONDS):
            code = main(argv)
        out, err = capfd.readouterr()
        shown = f"shadowline {' '.join(argv)} ({label}) -> {code}\n{err[-2000:]}"
        assert "Traceback" not in out + err, shown
        assert code != EXIT_INTERNAL, shown
        assert code in documented | {0}, shown
        if label == "required argument left out":
            assert code == EXIT_USAGE, shown
        if code != 0:
            assert err.strip(), f"{shown}: fails without saying why"


def test_every_command_is_driven():
    names = {" ".join(p[1:]) for p, _ in LEAVES}
    assert {"export model", "edge predict", "edge validate-config", "fleet serve", "hwbench", "keys show"} <= names
    # each one gets at least one bad invocation
    for path, cmd in LEAVES:
        assert invocations(path, cmd, Path("/x"), "http://127.0.0.1:9") or not cmd.params, path


def test_unexpected_error_is_one_line_with_its_code_and_debug_shows_the_traceback(monkeypatch, capfd, tmp_path):
    import export.exporter

    def broken(*_a: object, **_kw: object) -> None:
        raise RuntimeError("a bug\nwith a second line")

    monkeypatch.setattr(export.exporter, "export_model", broken)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    argv = ["export", str(model), "--preset", "pcb-aoi", "--out", str(tmp_path / "out")]
    assert main(argv) == EXIT_INTERNAL
    _, err = capfd.readouterr()
    assert err.strip() == ("error: internal error (RuntimeError: a bug with a second line); run `shadowline --debug "
                           "...` for the traceback")
    assert main(["--debug", *argv]) == EXIT_INTERNAL
    _, err = capfd.readouterr()
    assert "Traceback (most recent call last)" in err and "RuntimeError: a bug" in err


def test_real_process_exit_codes(tmp_path):
    """Through the installed entry point: a usage error, a domain error and an OS error, each one line."""
    exe = [sys.executable, "-m", "shadowline.cli"]
    run = lambda *a: subprocess.run(exe + list(a), capture_output=True, text=True, cwd=ROOT, timeout=120)
    usage = run("export", "model")
    assert usage.returncode == EXIT_USAGE and "Missing argument 'MODEL'" in usage.stderr
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(os.urandom(512))
    refused = run("export", str(junk), "--preset", "pcb-aoi", "--out", str(tmp_path / "out"))
    assert refused.returncode == 3 and "not an ONNX model" in refused.stderr
    locked = tmp_path / "locked"
    locked.mkdir()
    key = locked / "k"
    generated = run("keys", "generate", "--dir", str(locked), "--name", "k")
    assert generated.returncode == 0, generated.stderr
    (locked / "k.pub").chmod(0)
    if os.geteuid() != 0:  # root reads a file whatever its mode
        shown = run("keys", "show", str(key) + ".pub")
        assert shown.returncode == 74 and "Permission denied" in shown.stderr
    for r in (usage, refused):
        assert "Traceback" not in r.stderr + r.stdout
