"""The scenario format's two spellings: JSON files read as TOML files are, problems included,
and `tsemu scenario convert` / `check` / `reference`, whose output reads back as the same
scenario."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsemu.emulator.scenario import (
    Scenario,
    ScenarioError,
    build_table,
    load_scenario,
    parse_scenario,
    play,
)
from tsemu.emulator.scenario.files import parse_document
from tsemu.emulator.scenario.writer import dump_document

from .test_tasks import table_state

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))
FORMAT = ROOT / "emulator" / "scenario" / "FORMAT.md"
TSEMU = [sys.executable, "-m", "tsemu"]


def same(a: Scenario, b: Scenario) -> None:
    """Two scenarios are the same machine: everything but where they were read from."""
    assert (a.machine, a.cgroups, a.processes, a.timeline) == (
        b.machine, b.cgroups, b.processes, b.timeline)
    if a.machine.clock != "virtual":  # built on the real clock, two tables differ by the time
        a, b = a.with_overrides(clock="virtual"), b.with_overrides(clock="virtual")
    first, second = build_table(a), build_table(b)
    assert table_state(first) == table_state(second)
    assert [r for _, rs in play(first, a) for r in rs] == \
        [r for _, rs in play(second, b) for r in rs]


def reference_toml_blocks() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", FORMAT.read_text(), re.S)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_is_the_same_scenario_in_json(path: Path, tmp_path: Path) -> None:
    text = path.read_text()
    as_json = dump_document(parse_document(text, "x", "toml"), "json")
    target = tmp_path / (path.stem + ".json")
    target.write_text(as_json)
    same(load_scenario(path), load_scenario(target))
    back = dump_document(json.loads(as_json), "toml")
    same(load_scenario(path), parse_scenario(back, "back.toml"))


@pytest.mark.parametrize("block", range(len(reference_toml_blocks())))
def test_the_reference_examples_convert_both_ways(block: int) -> None:
    text = reference_toml_blocks()[block]
    scenario = parse_scenario(text, "ref.toml")
    document = parse_document(text, "ref.toml", "toml")
    same(scenario, parse_scenario(dump_document(document, "json"), "ref.json"))
    same(scenario, parse_scenario(dump_document(document, "toml"), "ref2.toml"))


def test_the_reference_json_example_reads() -> None:
    block = re.search(r"```json\n(.*?)```", FORMAT.read_text(), re.S)
    assert block is not None
    scenario = parse_scenario(block.group(1), "ref.json")
    assert scenario.machine.kernel == "7.2" and scenario.process(1).comm == "systemd"


def json_errors(text: str) -> list[str]:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, "s.json")
    return list(caught.value.problems)


@pytest.mark.parametrize(("text", "expected"), [
    ('{"machine": {"cpus": 2},\n "process": [{"pid": 5}',
     "s.json: line 2, column 24: invalid JSON: Expecting"),
    ("[1, 2]", "a JSON scenario is an object"),
    ('{"machine": {"cpus": NaN}}', "NaN is not a number a scenario can hold"),
    ('{"machine": {"start": 1e999}}', "too large a number"),
    ('{"process": [{"comm": "x", "pid": "7"}]}',
     's.json: process[0].pid: expected an integer, got a string "7"'),
    ('{"process": [{"comm": "x", "cpu": 9}]}', "process[0].cpu: cpu 9 does not exist"),
    ('{"machine": {"boot_time": "yesterday"}}', "is not an RFC 3339 date-time"),
    ('{"timeline": [{"at": "1s", "exit": {"pid": 4}}]}', "no task 4 exists at 1s"),
    ("[" * 100_000, "invalid JSON"),
])
def test_json_problems_are_named_by_key_path(text: str, expected: str) -> None:
    problems = json_errors(text)
    assert any(expected in p for p in problems), problems
    assert not any("the entry begins" in p for p in problems)


def test_json_date_times_are_strings() -> None:
    scenario = parse_scenario(json.dumps({
        "machine": {"boot_time": "2024-06-01T08:00:00Z"},
        "process": [{"pid": 3, "comm": "x", "delays": {"cpu": {"max_at": "2024-06-01T09:00:00Z"}}}],
    }), "t.json")
    assert scenario.machine.boot_wall_seconds == 1717228800
    assert scenario.process(3).counters["cpu_delay_max_ts"] == (1717232400, 0)


def test_a_json_scenario_keeps_its_text_for_overrides() -> None:
    scenario = parse_scenario('{"machine": {"cpus": 2}, "process": [{"pid": 3, "comm": "x"}]}',
                              "t.json")
    wider = scenario.with_overrides(cpus=4, kernel="7.2")
    assert (wider.machine.cpus, wider.machine.kernel) == (4, "7.2")
    assert wider.document is not None and wider.document["machine"]["cpus"] == 4


scalars = st.one_of(st.integers(-(2**70), 2**70), st.booleans(),
                    st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=12))
keys = st.text(max_size=8)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)), max_leaves=8)


@settings(max_examples=200)
@given(st.dictionaries(keys, st.one_of(values, st.lists(st.dictionaries(keys, values,
                                                                        max_size=3),
                                                        min_size=1, max_size=3)),
                       max_size=4))
def test_any_document_writes_back_to_itself(document: dict[str, Any]) -> None:
    """The writer's output parses back to the document it wrote, in both languages (the
    scenario's own checks aside: this is about the spelling)."""
    assert tomllib.loads(dump_document(document, "toml")) == document
    assert json.loads(dump_document(document, "json")) == document


# --- the command line ------------------------------------------------------------------------


def tsemu(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TSEMU, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_check_says_what_each_file_holds_and_fails_on_a_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"process": [{"comm": 5}]}')
    done = tsemu("scenario", "check", str(EXAMPLES[0]), str(bad))
    assert done.returncode == 1
    assert re.fullmatch(rf"{re.escape(str(EXAMPLES[0]))}: ok: kernel 6\.18, \d+ CPUs, \d+ "
                        r"processes \(\d+ tasks\) at the start, \d+ timeline events, virtual "
                        r"clock\n", done.stdout)
    assert done.stderr == f"{bad}: process[0].comm: expected a string, got an integer 5\n"


def test_convert_writes_the_other_language_and_refuses_to_overwrite(tmp_path: Path) -> None:
    source = ROOT / "examples" / "multithreaded.toml"
    target = tmp_path / "m.json"
    done = tsemu("scenario", "convert", str(source), str(target))
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith(f"tsemu: wrote {target} (JSON")
    same(load_scenario(source), load_scenario(target))
    again = tsemu("scenario", "convert", str(source), str(target))
    assert again.returncode == 1
    assert again.stderr == f"tsemu: {target} exists: give --force to replace it\n"
    assert tsemu("scenario", "convert", str(source), str(target), "--force").returncode == 0
    out = tsemu("scenario", "convert", str(target), "-")
    assert out.returncode == 0
    same(load_scenario(source), parse_scenario(out.stdout, "stdout.toml"))


def test_convert_does_not_write_a_scenario_with_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[process]]\ncomm = "x"\ncpu = 7\n')
    done = tsemu("scenario", "convert", str(bad), str(tmp_path / "out.json"))
    assert done.returncode == 1
    assert "process[0].cpu: cpu 7 does not exist" in done.stderr
    assert done.stderr.endswith(f"tsemu: {bad} was not converted: it has problems\n")
    assert not (tmp_path / "out.json").exists()


def test_convert_does_not_follow_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    link = tmp_path / "out.json"
    link.symlink_to(victim)
    done = tsemu("scenario", "convert", str(ROOT / "examples" / "burst.toml"), str(link),
                 "--force")
    assert done.returncode == 1 and "cannot write" in done.stderr
    assert victim.read_text() == "keep"


def test_reference_prints_the_format() -> None:
    done = tsemu("scenario", "reference")
    assert done.returncode == 0 and done.stdout == FORMAT.read_text()
