"""YAML config files validated by pydantic models, with every error given as `file:line: key.path: message`: the
device config, the fleet config and release specs all read their files through here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from runtime.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
Loc = tuple[Any, ...]


def read_config_text(path: Path | str, what: str = "config") -> str:
    """The text of a config file, or a ConfigError naming the file: unreadable, or not text at all (a binary file
    given by mistake would otherwise escape as a UnicodeDecodeError)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the {what} ({err.strerror or err})") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: the {what} is not UTF-8 text (byte {err.start}: {err.reason})") from err


def read_yaml(text: str, where: str) -> tuple[yaml.Node | None, dict[str, Any]]:
    """The document's node tree (for line numbers) and its data, which must be a mapping (empty text: {})."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{where}{line}: not valid YAML ({getattr(err, 'problem', err)})") from err
    if data is None:
        return root, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return root, data


def node_at(node: yaml.Node | None, loc: Loc) -> yaml.Node | None:
    """The deepest YAML node along `loc` (a pydantic error location), for its line number; a key that is absent
    (a missing field) is reported at its parent."""
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if str(k.value) == str(key):
                    nxt = k if key == loc[-1] else v
                    break
            if nxt is None:
                break
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            break
    return node


def describe(err: ValidationError, root: yaml.Node | None, where: str,
             clean_loc: Callable[[Loc], Loc] | None = None) -> str:
    """One line per problem: `where:line: key.path: message`. `clean_loc` drops what pydantic puts in a location
    that is not a key of the document (a discriminated union's tag)."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        if clean_loc is not None:
            loc = clean_loc(loc)
        node = node_at(root, loc)
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        path = ".".join(str(p) for p in loc) or "(top)"
        msg = e["msg"].replace("Value error, ", "", 1)
        lines.append(f"{where}{line}: {path}: {msg}")
    return "\n".join(lines)


def parse_yaml_model(text: str, model: type[M], where: str, overrides: dict[str, Any] | None = None,
                     clean_loc: Callable[[Loc], Loc] | None = None) -> M:
    """Validate YAML text (plus `overrides`, e.g. command-line options, on top) as `model`; a ConfigError lists
    every problem as `file:line: key.path: message` (no line for a key that came from `overrides`)."""
    root, data = read_yaml(text, where)
    data.update(overrides or {})
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe(err, root, where, clean_loc)) from err
