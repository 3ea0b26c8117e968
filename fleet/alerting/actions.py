"""Where the people's actions on alerts are kept: an append-only log. `JsonlActionLog` writes fsynced JSON lines
in the fleet's data directory (like the promotion audit log); anything with `append` and `entries` will do."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import BinaryIO, Protocol

from pydantic import TypeAdapter, ValidationError

from fleet.alerting.model import Action
from runtime.errors import ConfigError

_ACTION: TypeAdapter[Action] = TypeAdapter(Action)


class ActionLog(Protocol):
    def append(self, action: Action) -> None: ...

    def entries(self) -> list[Action]: ...


def _drop_torn_tail(fh: BinaryIO) -> None:
    """Cut a last line that has no newline: a write a crash cut short. `append` had not returned for it, so
    nobody was told the action was recorded."""
    end = fh.seek(0, os.SEEK_END)
    if end == 0:
        return
    fh.seek(end - 1)
    if fh.read(1) == b"\n":
        return
    pos = end
    while pos > 0:
        step = min(4096, pos)
        fh.seek(pos - step)
        nl = fh.read(step).rfind(b"\n")
        if nl >= 0:
            fh.truncate(pos - step + nl + 1)
            return
        pos -= step
    fh.truncate(0)


class JsonlActionLog:
    """One JSON object per line, flushed and fsynced before `append` returns: an acknowledged action survives a
    crash. A torn last line (power cut mid-write) is skipped on reading and cut before the next append; any other
    bad line is an error that names the file and line."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def append(self, action: Action) -> None:
        line = action.model_dump_json() + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a+b") as fh:
                _drop_torn_tail(fh)
                fh.write(line.encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())

    def entries(self) -> list[Action]:
        if not self.path.exists():
            return []
        text = self.path.read_text(encoding="utf-8")
        lines = text.split("\n")  # not splitlines(): \x85 or U+2028 inside a value is no line end
        out: list[Action] = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                out.append(_ACTION.validate_python(json.loads(line)))
            except (json.JSONDecodeError, ValidationError) as err:
                if n == len(lines) and not text.endswith("\n"):  # cut short by a crash: the rest is intact
                    break
                raise ConfigError(f"{self.path}:{n}: not an alert action: {err}") from err
        return out
