"""Scenario files: TOML for people, JSON for machines, the same schema; read, check, write.

What lives here: `load_scenario` and `parse_scenario` (a file or a text to a checked
`Scenario`, or a `ScenarioError` listing every problem), the embedded default machine, and
`dump_document` (a document written out in either language, for `tsemu scenario convert`).
The language is the file's suffix: ``.json`` is JSON, anything else TOML. What must not:
what the keys mean (`reader`), playing (`check`).

Reading is all-or-nothing: the document is parsed (tomllib or json, nothing else), read
(`reader.read_document`), then *played* on a private table with a virtual clock
(`check.simulate`), so that every pid a timeline entry names is checked against the tasks
alive at that moment. Nothing of the document outlives the reading but the text,
compressed, for `Scenario.with_overrides`.
"""

from __future__ import annotations

import functools
import json
import re
import tomllib
import zlib
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .build import collector_paused
from .check import simulate
from .problems import Problems, ScenarioError
from .reader import Reading, read_document
from .specs import Scenario
from .values import shared_values

DEFAULT_SOURCE = "<string>"
DEFAULT_SCENARIO_RESOURCE = "default.toml"
SYNTAXES = ("toml", "json")


def syntax_of(path: str | Path) -> str:
    """The language a scenario file is written in, by its suffix."""
    return "json" if str(path).lower().endswith(".json") else "toml"


def load_scenario(path: str | Path) -> Scenario:
    """Read and check the scenario file at `path` (ScenarioError naming it if unreadable)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ScenarioError([f"{path}: cannot read the scenario: {exc.strerror or exc}"]
                            ) from None
    syntax = syntax_of(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError([f"{path}: not UTF-8 text (byte {exc.start}): a scenario is a "
                             f"{syntax.upper()} file"]) from None
    del raw
    return parse_scenario(text, str(path), syntax=syntax)


def parse_scenario(text: str, source: str = DEFAULT_SOURCE, *, syntax: str | None = None
                   ) -> Scenario:
    """Read and check a scenario's text (TOML, or JSON: by `syntax`, else by the suffix of
    `source`); ScenarioError listing every problem found."""
    return read_text(text, source, syntax=syntax or syntax_of(source))


@functools.cache
def default_scenario() -> Scenario:
    """The embedded default machine (`tsemu serve` without --scenario, `make run`)."""
    resource = resources.files(__package__).joinpath(DEFAULT_SCENARIO_RESOURCE)
    return parse_scenario(resource.read_text(encoding="utf-8"),
                          f"{__package__}/{DEFAULT_SCENARIO_RESOURCE}")


def read_text(text: str, source: str, *, syntax: str = "toml",
              overrides: Mapping[str, Any] | None = None,
              packed_text: bytes | None = None) -> Scenario:
    """Read `text` (with [machine] `overrides`) and check it: the Scenario, or ScenarioError."""
    if syntax not in SYNTAXES:
        raise ValueError(f"unknown scenario syntax {syntax!r}; choose one of {SYNTAXES}")
    with collector_paused():
        problems = Problems(source, text if syntax == "toml" else None)
        with shared_values():
            document = parse_document(text, source, syntax)
            if overrides and type(document.setdefault("machine", {})) is dict:
                document["machine"].update(overrides)
            reading = read_document(document, problems)
            del document  # (gone before the check builds a table, which reuses its memory)
        if packed_text is None:
            packed_text = zlib.compress(text.encode("utf-8", "surrogatepass"), 1)
        return _conclude(reading, problems, packed_text, syntax, overrides)


def check_document(document: Mapping[str, Any], source: str, *, text: str | None = None,
                   syntax: str = "toml") -> Scenario:
    """A document already parsed, read and checked (`text`, if given, is the text it was
    parsed from: for the problems' line numbers and `Scenario.text`)."""
    with collector_paused():
        problems = Problems(source, text if syntax == "toml" else None)
        with shared_values():
            reading = read_document(document, problems)
        packed = None if text is None else zlib.compress(text.encode("utf-8", "surrogatepass"),
                                                         1)
        return _conclude(reading, problems, packed, syntax, None)


def _conclude(reading: Reading, problems: Problems, packed_text: bytes | None, syntax: str,
              overrides: Mapping[str, Any] | None) -> Scenario:
    """Check a reading by playing it; the Scenario, with the table built at its start."""
    machine = reading.machine
    specs, timeline, start = simulate(problems, machine, reading.cgroups, reading.specs,
                                      reading.where, reading.drafts, reading.dropped)
    problems.raise_if_any()
    scenario = Scenario(source=problems.source, machine=machine,
                        cgroups=tuple(dict.fromkeys(reading.cgroups)),
                        processes=tuple(specs), timeline=tuple(timeline),
                        faults=tuple(reading.faults), storms=tuple(reading.storms),
                        packed_text=packed_text, syntax=syntax,
                        overrides=MappingProxyType(dict(overrides or {})))
    if start is not None:
        scenario._start_table.append(start)
    return scenario


#: The keys that hold a time (a moment or a span): in TOML, written with a unit ("3s"); only
#: 0 may go without. (JSON, the machines' spelling, keeps integer nanoseconds; counters are
#: nanoseconds as taskstats reports them, in both.)
TIME_KEYS = frozenset({"at", "start", "age", "until", "duration", "delay", "lifetime"})


def _bare_times(node: Any, where: str) -> Iterator[tuple[str, int]]:
    """(where, value) of each time written as a bare non-zero integer in a TOML document."""
    if isinstance(node, dict):
        for key, value in node.items():
            inner = f"{where}.{key}" if where else str(key)
            if key in TIME_KEYS and type(value) is int and value != 0:
                yield inner, value
            elif isinstance(value, (dict, list)) and key != "counters":
                yield from _bare_times(value, inner)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _bare_times(item, f"{where}[{index}]")


def parse_document(text: str, source: str, syntax: str) -> dict[str, Any]:
    """The document of `text` (a dict at the top); ScenarioError saying what is wrong with
    the TOML or JSON as such."""
    try:
        if syntax == "json":
            document = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
            if type(document) is not dict:
                raise ScenarioError([f"{source}: a JSON scenario is an object {{...}} at the "
                                     "top"])
            return document
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError([_toml_problem(source, str(exc))]) from None
    except json.JSONDecodeError as exc:
        raise ScenarioError([f"{source}: line {exc.lineno}, column {exc.colno}: invalid "
                             f"JSON: {exc.msg}"]) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits, or NaN in JSON
        raise ScenarioError([f"{source}: invalid {syntax.upper()}: {exc}"]) from None
    except RecursionError:
        raise ScenarioError([f"{source}: invalid {syntax.upper()}: arrays or tables nested "
                             "too deeply"]) from None
    bare = list(_bare_times(document, ""))
    if bare:
        raise ScenarioError([f"{source}: {where}: {value} has no unit: write "
                             f'"{value}s", "{value}ms" or "{value}ns" (in TOML a time '
                             "carries its unit; a bare integer would be nanoseconds)"
                             for where, value in bare])
    return document


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a scenario can hold")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is too large a number for a scenario")
    return value


def _toml_problem(source: str, message: str) -> str:
    match = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if match:
        return (f"{source}: line {match.group(1)}, column {match.group(2)}: invalid TOML: "
                f"{message[:match.start()]}")
    match = re.search(r"\s*\(at end of document\)$", message)
    if match:
        return f"{source}: at the end of the file: invalid TOML: {message[:match.start()]}"
    return f"{source}: invalid TOML: {message}"
