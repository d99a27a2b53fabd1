"""Writing a scenario document out, in TOML or JSON (`tsemu scenario convert`).

What lives here: `dump_document`, which writes a parsed document (the same schema in either
language) as text that parses back to the same document, so a scenario checked in one
language is the same scenario in the other. TOML: `[machine]`, then each array of tables as
`[[name]]` sections (a process's `[[process.thread]]` entries as sections of their own), every
other table inline. JSON: one entry of each array per line. What must not: checking
(`files`), meaning (`reader`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Mapping
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def dump_document(document: Mapping[str, Any], syntax: str) -> str:
    """`document` as TOML or JSON text."""
    if syntax == "json":
        return _json_document(document)
    if syntax == "toml":
        return _toml_document(document)
    raise ValueError(f"unknown scenario syntax {syntax!r}; choose toml or json")


# --- JSON --------------------------------------------------------------------------------------


def _json_value(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} has no JSON spelling in a scenario")


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=_json_value)


def _json_document(document: Mapping[str, Any]) -> str:
    parts = []
    for key, value in document.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            entries = ",\n  ".join(_json(entry) for entry in value)
            parts.append(f"{_json(key)}: [\n  {entries}]")
        else:
            parts.append(f"{_json(key)}: {_json(value)}")
    return "{" + ",\n ".join(parts) + "}\n"


# --- TOML --------------------------------------------------------------------------------------


def _toml_document(document: Mapping[str, Any]) -> str:
    lines: list[str] = []
    scalars = {k: v for k, v in document.items() if not _is_section(v) and not _is_tables(v)}
    lines += [f"{_key(k)} = {_toml(v)}" for k, v in scalars.items()]
    for key, value in document.items():
        if _is_section(value):
            _section(lines, f"[{_key(key)}]", value, _key(key))
        elif _is_tables(value):
            for entry in value:
                _section(lines, f"[[{_key(key)}]]", entry, _key(key))
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_section(value: Any) -> bool:
    return isinstance(value, dict)


def _is_tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _section(lines: list[str], header: str, table: Mapping[str, Any], path: str) -> None:
    """A table as a section: its keys (sub-tables inline), then its arrays of tables as
    sections of their own."""
    lines += ["", header]
    nested = {k: v for k, v in table.items() if _is_tables(v) and _has_scalars_only(v)}
    lines += [f"{_key(k)} = {_toml(v)}" for k, v in table.items() if k not in nested]
    for key, entries in nested.items():
        for entry in entries:
            _section(lines, f"[[{path}.{_key(key)}]]", entry, f"{path}.{_key(key)}")


def _has_scalars_only(entries: list[dict[str, Any]]) -> bool:
    """Whether an array of tables may be written as sections (none of them holds an array of
    tables itself, which inline values then express as well)."""
    return not any(_is_tables(v) for entry in entries for v in entry.values())


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} has no place in a scenario")
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_key(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"{type(value).__name__} has no TOML spelling in a scenario")


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def _string(text: str) -> str:
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'
