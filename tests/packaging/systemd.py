"""What the packaging tests need of systemd without a running systemd: its unit-file format, the restart decision
of systemd.service(5) and the directories that stay writable under ProtectSystem= (systemd.exec(5))."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Sections of Key=Value lines; repeatable keys keep every value; `#`/`;` comments; backslash continuations."""
    sections: Unit = {}
    current: dict[str, list[str]] | None = None
    for raw in text.replace("\\\n", " ").splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        if current is None:
            raise ValueError(f"{raw!r} outside a section")
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"not Key=Value: {raw!r}")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def words(svc: dict[str, list[str]], key: str) -> list[str]:
    """Every space-separated word of a list setting (several lines add up, as systemd reads them)."""
    return [w for v in svc.get(key, []) for w in shlex.split(v)]


def exec_argv(line: str) -> list[str]:
    """An Exec*= line's argv, without systemd's prefixes (`-` ignore failure, `@`, `:`, `+`, `!`)."""
    argv = shlex.split(line)
    argv[0] = argv[0].lstrip("-@:+!")
    return argv


@dataclass(frozen=True)
class Ended:
    """How a command of the unit ended: which (`pre` for ExecStartPre=, `main` for ExecStart=) and its status."""

    command: str
    exit_code: int | None = None
    signal: str | None = None  # e.g. "SIGKILL"


CLEAN_SIGNALS = {"SIGHUP", "SIGINT", "SIGTERM", "SIGPIPE"}


def restarts(svc: dict[str, list[str]], ended: Ended) -> bool:
    """Whether systemd restarts the service after `ended`, by systemd.service(5) for Restart=no|on-failure|always
    (the cases this unit uses). RestartPreventExitStatus= "when returned by the main service process": a failing
    ExecStartPre= is a failure (result exit-code) that the list does not cover."""
    policy = (svc.get("Restart") or ["no"])[-1]
    if policy == "no":
        return False
    prevent = words(svc, "RestartPreventExitStatus")
    if ended.command == "main":
        if ended.exit_code is not None and str(ended.exit_code) in prevent:
            return False
        if ended.signal is not None and ended.signal in prevent:
            return False
    if policy == "always":
        return True
    if policy != "on-failure":
        raise NotImplementedError(f"Restart={policy}")
    success = {"0", *words(svc, "SuccessExitStatus")}
    if ended.exit_code is not None:
        return str(ended.exit_code) not in success
    return ended.signal not in CLEAN_SIGNALS


def writable_roots(svc: dict[str, list[str]]) -> list[PurePosixPath]:
    """Where the service may write under ProtectSystem=strict (systemd.exec(5)): ReadWritePaths=, the
    StateDirectory=/CacheDirectory=/LogsDirectory=/RuntimeDirectory= it gets created, and a private /tmp and
    /var/tmp with PrivateTmp=. Only `strict` is modelled (the unit's setting; the test checks that it is)."""
    if (svc.get("ProtectSystem") or ["no"])[-1] != "strict":
        raise NotImplementedError("only ProtectSystem=strict is modelled")
    roots = [PurePosixPath(p.lstrip("-")) for p in words(svc, "ReadWritePaths")]
    for key, base in (("StateDirectory", "/var/lib"), ("CacheDirectory", "/var/cache"),
                      ("LogsDirectory", "/var/log"), ("RuntimeDirectory", "/run")):
        roots += [PurePosixPath(base) / d.split(":", 1)[0] for d in words(svc, key)]
    if (svc.get("PrivateTmp") or ["no"])[-1] in ("yes", "true", "1", "on"):
        roots += [PurePosixPath("/tmp"), PurePosixPath("/var/tmp")]
    return roots


def is_writable(svc: dict[str, list[str]], path: str | Path) -> bool:
    p = PurePosixPath(str(path))
    hidden = [PurePosixPath(h) for h in ("/home", "/root", "/run/user")]
    if (svc.get("ProtectHome") or ["no"])[-1] in ("yes", "true", "1", "on") and any(
            p == h or h in p.parents for h in hidden):
        return False
    return any(p == r or r in p.parents for r in writable_roots(svc))
