"""Fault rules, as a scenario's [[fault]] table and a control request spell them.

What lives here: the keys of a fault (`FAULT_KEYS`) and `read_fault`, the one reading of a
fault's values, which both the scenario reader and the control protocol (`tsemu ctl fault`)
use. What a fault does: `tsemu.emulator.model.faults`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..model.faults import COMMANDS, KINDS, TARGETS
from .values import (
    Bad,
    errno_number,
    parse_duration,
    ranged,
    share,
    show,
    size_in_bytes,
    string,
    suggest,
)


def _choice(name: str, choices: tuple[str, ...]) -> Callable[[object], str]:
    def convert(value: object) -> str:
        text = string(value)
        if text not in choices:
            raise Bad(f"unknown {name} {show(text)}; {suggest(text, choices)}")
        return text
    return convert


#: A fault's keys: how each is read, and the `Fault` field it gives.
FAULT_KEYS: Mapping[str, tuple[Callable[[object], Any], str]] = {
    "kind": (_choice("fault kind", KINDS), "kind"),
    "on": (_choice("target", TARGETS), "on"),
    "pid": (ranged(1, 2**22), "pid"),
    "cpu": (ranged(0, 8191), "cpu"),
    "port": (ranged(-(2**31), 2**32 - 1), "port"),
    "cmd": (_choice("command", COMMANDS), "cmd"),
    "count": (ranged(1, 2**31), "count"),
    "probability": (share, "probability"),
    "at": (parse_duration, "at_ns"),
    "until": (parse_duration, "until_ns"),
    "errno": (errno_number, "errno"),
    "delay": (parse_duration, "delay_ns"),
    "budget": (size_in_bytes, "budget"),
    "duration": (parse_duration, "duration_ns"),
}
#: What each kind needs besides its kind.
_NEEDS = {"errno": "errno", "delay": "delay", "budget": "budget", "pause": "duration"}


def read_fault(values: Mapping[str, Any], fail: Callable[[str | None, str], None]
               ) -> dict[str, Any] | None:
    """A fault's `Fault` fields from its keys (`fail(key, problem)` for each problem: None
    then). The port is kept unsigned, as the server numbers clients."""
    fields: dict[str, Any] = {}
    ok = True
    for key, value in values.items():
        reader = FAULT_KEYS.get(key)
        if reader is None:
            fail(key, f"unknown key; {suggest(key, tuple(FAULT_KEYS))}")
            ok = False
            continue
        try:
            fields[reader[1]] = reader[0](value)
        except Bad as exc:
            fail(key, str(exc))
            ok = False
    kind = fields.get("kind")
    if kind is None:
        if "kind" not in values:
            fail(None, f"missing required key \"kind\" ({', '.join(KINDS)})")
        return None
    need = _NEEDS.get(kind)
    if need is not None and need not in values:
        fail(None, f"a fault of kind {kind} needs {need}")
        ok = False
    if kind == "budget" and "port" not in values:
        fail(None, "a budget fault needs the port whose budget it sets")
        ok = False
    if "until_ns" in fields and fields["until_ns"] <= fields.get("at_ns", 0):
        fail("until", "the fault's window ends before it begins")
        ok = False
    if "port" in fields:
        fields["port"] &= 0xFFFFFFFF
    return fields if ok else None
