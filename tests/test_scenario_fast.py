"""Loading a scenario the fast way reads exactly as the reference way.

The fast way: toml-rs parses the text (`scenario_toml.fast_document`) and `_QuickProcess`
reads the usual [[process]] tables without the readers. The reference: tomllib, and the
readers for every table. Both must give equal Scenarios (counters in the same order too),
and, for a bad file, the very same problems, worded by tomllib for a TOML error."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsemu.emulator.scenario import reader as scenario_module
from tsemu.emulator.scenario import toml_fast as scenario_toml
from tsemu.emulator.scenario.reader import (
    Scenario,
    ScenarioError,
    build_table,
    load_scenario,
    parse_scenario,
)

from .test_tasks import table_state

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))
BAD = sorted((Path(__file__).resolve().parent / "scenarios").glob("*.toml"))
DEFAULT = ROOT / "emulator" / "scenario" / "default.toml"
#: CPython's own tomllib test data, where the interpreter ships its tests.
TOMLLIB_DATA = Path(tomllib.__file__).resolve().parent.parent / "test" / "test_tomllib" / "data"

needs_fast = pytest.mark.skipif(scenario_toml.fast_loads is None,
                                reason="toml-rs is not installed: tomllib reads everything")

#: A scenario with a bit of everything the format has.
VARIED = """
[machine]
cpus = 4
kernel = "7.2"
boot_time = 2024-06-01T08:00:00+02:00
start = "1h"

[[cgroup]]
path = "/declared/empty"

[[process]]
pid = 1
comm = "init"
state = "sleeping"
cgroup = "/init.scope"
start = 0
exe = { dev = "8:1", inode = 18446744073709551615 }
delays.cpu = { count = 3, total = "1.5ms", max = "1ms", min = "250ns", max_at = "90s" }
delays.blkio = { count = 1, total = 7, max_at = 2024-06-01T06:01:40.5Z }
delays.swapin.max_at = [12, 34]
times = { utime = "1m30s", stime = "3µs", utimescaled = 5, run_virtual = "1us" }
memory = { coremem = 10, virtmem = 20, hiwater_rss = "1.5MiB", hiwater_vm = 4096 }
io = { read_char = "1.2MiB", write_char = 18446744073709551615, read_bytes = "4KiB" }
faults = { minflt = 5, majflt = 1 }
switches = { nvcsw = 8, nivcsw = 9 }
counters = { wpcopy_count = 2, irq_delay_total = "40us", thrashing_delay_max_ts = [1, 2] }

[[process]]
comm = "auto-pid"
uid = 1000
gid = 100
cpu = 3
age = "50m"
nice = -20
policy = "fifo"
forked_no_exec = true
superuser = true
threads = 3
times.utime = "2s"
io.write_bytes = 0

[[process]]
pid = 300
comm = "threaded"
ppid = 1
cpu = 1
threads = 4
policy = 5
delays.cpu = { total = "1ms", count = 2 }
[[process.thread]]
tid = 301
comm = "worker"
state = "io_wait"
age = "10s"
delays.blkio = { count = 1, total = "2ms" }
[[process.thread]]
cpu = 2
superuser = true

[[process]]
pid = 400
comm = "plain"
state = "Stopped"
policy = "SCHED_IDLE"
cgroup = "/user.slice/a b"
times = { stime = "3ms", utime = "1ms" }
delays = { blkio = { count = 1 }, cpu = { count = 2 } }

[[timeline]]
at = "1s"
spawn = { pid = 4242, comm = "backup", threads = 2, io = { read_bytes = "1MiB" } }

[[timeline]]
at = "1.5s"
add = { pid = 4242, delays.blkio = { count = 1, total = "3ms" } }

[[timeline]]
at = "2s"
set = { pid = 400, comm = "renamed", nice = 5 }

[[timeline]]
at = "3s"
exit_group = { pid = 4242, signal = "SIGKILL" }

[[generator]]
kind = "short_jobs"
seed = 0xffffffffffffffffffffffffffffffffffffffff
count = 20
duration = "1s"
lifetime = ["5ms", "20ms"]
cpus = "0-3"
killed = 0.25
times = { utime = ["1ms", "2ms"] }
"""


def outcome(text: str, source: str = "t.toml") -> Scenario | list[str]:
    try:
        return parse_scenario(text, source)
    except ScenarioError as exc:
        return list(exc.problems)


def both(monkeypatch: pytest.MonkeyPatch, text: str, source: str = "t.toml"
         ) -> tuple[Scenario | list[str], Scenario | list[str]]:
    """(the fast way's outcome, the reference way's)."""
    fast = outcome(text, source)
    with monkeypatch.context() as patch:
        patch.setattr(scenario_toml, "fast_loads", None)
        patch.setattr(scenario_module._QuickProcess, "read", lambda self, data: None)
        slow = outcome(text, source)
    return fast, slow


def counters_in_order(scenario: Scenario) -> list[Any]:
    """Every spec's counters as item lists: equal dicts may differ in order, these not."""
    return [(list(spec.counters.items()), [list(t.counters.items()) for t in spec.threads])
            for spec in scenario.processes]


def assert_same(fast: Scenario | list[str], slow: Scenario | list[str]) -> None:
    assert type(fast) is type(slow), (fast, slow)
    if isinstance(fast, list):
        assert fast == slow
        return
    assert isinstance(slow, Scenario)
    assert fast == slow
    assert counters_in_order(fast) == counters_in_order(slow)
    assert fast.text == slow.text
    if fast.machine.clock == "virtual":  # (a real clock's table starts at the build)
        assert table_state(build_table(fast)) == table_state(build_table(slow))


# --- whole files ----------------------------------------------------------------------------


@needs_fast
@pytest.mark.parametrize("path", [*EXAMPLES, DEFAULT], ids=lambda p: p.name)
def test_every_shipped_scenario_reads_the_same_both_ways(path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    assert_same(*both(monkeypatch, path.read_text(), str(path)))


@needs_fast
def test_a_varied_scenario_reads_the_same_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    fast, slow = both(monkeypatch, VARIED)
    assert isinstance(fast, Scenario), fast
    assert_same(fast, slow)
    init = fast.process(1)
    assert init.counters["ac_exe_inode"] == 2**64 - 1, "a u64 reads whole"
    assert fast.processes[1].pid == 4242 + 3, "automatic pids come after the written ones"


@needs_fast
def test_the_docstring_example_reads_the_same_both_ways(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    example = re.search(r"```toml\n(.*?)```", scenario_module.__doc__ or "", re.S)
    assert example is not None
    assert_same(*both(monkeypatch, example.group(1)))


@needs_fast
def test_a_generated_big_scenario_reads_the_same_both_ways(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    from bench.tables import scenario_text

    monkeypatch.setattr(scenario_toml, "_PIECE", 4096)  # read in pieces
    for shape in ("processes", "threads"):
        assert_same(*both(monkeypatch, scenario_text(1_000, shape)))


@needs_fast
@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_every_bad_file_gets_the_same_problems_both_ways(path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    fast, slow = both(monkeypatch, path.read_text(), str(path))
    assert isinstance(fast, list) and fast
    assert fast == slow


@needs_fast
def test_overrides_are_checked_the_same_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = load_scenario(ROOT / "examples" / "multithreaded.toml")
    fast = scenario.with_overrides(kernel="6.1", family_id=0x20)
    with pytest.raises(ScenarioError) as caught_fast:
        scenario.with_overrides(cpus=1)
    with monkeypatch.context() as patch:
        patch.setattr(scenario_toml, "fast_loads", None)
        patch.setattr(scenario_module._QuickProcess, "read", lambda self, data: None)
        slow = scenario.with_overrides(kernel="6.1", family_id=0x20)
        with pytest.raises(ScenarioError) as caught_slow:
            scenario.with_overrides(cpus=1)
    assert_same(fast, slow)
    assert caught_fast.value.problems == caught_slow.value.problems


# --- TOML errors: tomllib's words, whichever parser read first -----------------------------


def syntax_problem(text: str) -> str:
    problems = outcome(text, "s.toml")
    assert isinstance(problems, list) and len(problems) == 1, problems
    return problems[0]


@pytest.mark.parametrize(("text", "expected"), [
    ("[[process]]\npid = 1\ncomm \"x\"\n",
     "s.toml: line 3, column 6: invalid TOML: Expected '=' after a key in a key/value pair"),
    ("[machine]\ncpus = 2\ncpus = 3\n",
     "s.toml: line 3, column 9: invalid TOML: Cannot overwrite a value"),
    ("a = {\n b = 1 }\n",
     "s.toml: line 1, column 6: invalid TOML: Invalid initial character for a key part"),
    ("\ufeff[machine]\ncpus = 2\n",
     "s.toml: line 1, column 1: invalid TOML: Invalid statement"),
    ("[[process]]\ncomm = \"x\"\nstart = 1979-05-27T07:32:60Z\n",
     "s.toml: line 3, column 19: invalid TOML: Expected newline or end of document after a "
     "statement"),
    ('[[process]]\ncomm = "x\\e"\n', "s.toml: line 2, column 12: invalid TOML: Unescaped '\\' "
     "in a string"),
    ("[[process]]\ncomm = 'x'\nthreads = ",
     "s.toml: at the end of the file: invalid TOML: Invalid value"),
], ids=["missing =", "twice", "multi-line inline table", "byte-order mark", "leap second",
        "TOML 1.1 escape", "end of file"])
def test_a_syntax_error_is_worded_by_tomllib_either_way(text: str, expected: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    fast = syntax_problem(text)
    monkeypatch.setattr(scenario_toml, "fast_loads", None)
    assert fast == syntax_problem(text) == expected


def test_values_nested_thousands_deep_are_refused_not_a_crash() -> None:
    """toml-rs overflows the stack on deep nesting (a segfault): the nesting guard hands
    such a text to tomllib, which refuses it. In a child process: a crash fails the test
    instead of killing the test run."""
    script = (
        "from tsemu.emulator.scenario.reader import parse_scenario, ScenarioError\n"
        "for text in ['a = ' + '[' * 20000 + ']' * 20000,\n"
        "             'a = ' + '{b=' * 20000 + '1' + '}' * 20000,\n"
        "             'a = [' + '[\\n' * 20000 + ']\\n' * 20000 + ']']:\n"
        "    try:\n"
        "        parse_scenario(text, 'deep.toml')\n"
        "    except ScenarioError as exc:\n"
        "        print(exc)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [
        "deep.toml: invalid TOML: arrays or tables nested too deeply"] * 3


def test_an_integer_too_long_for_tomllib_is_refused_either_way(
        monkeypatch: pytest.MonkeyPatch) -> None:
    digits = sys.get_int_max_str_digits() or 4300
    text = ('[[generator]]\nkind = "short_jobs"\ncount = 1\nseed = ' + "7" * (digits + 1)
            + "\n")
    fast = syntax_problem(text)
    assert fast.startswith("s.toml: invalid TOML: Exceeds the limit (4300 digits)")
    monkeypatch.setattr(scenario_toml, "fast_loads", None)
    assert syntax_problem(text) == fast


def test_a_long_hexadecimal_seed_reads_the_same_either_way(
        monkeypatch: pytest.MonkeyPatch) -> None:
    text = '[[generator]]\nkind = "short_jobs"\ncount = 3\nseed = 0x' + "f" * 5000 + "\n"
    fast, slow = both(monkeypatch, text)
    assert isinstance(fast, Scenario)
    assert_same(fast, slow)


# --- the parsers and the guard --------------------------------------------------------------


@needs_fast
@pytest.mark.skipif(not TOMLLIB_DATA.is_dir(), reason="CPython's tomllib tests are not here")
def test_toml_rs_reads_cpythons_tomllib_test_data_as_tomllib() -> None:
    files = sorted(TOMLLIB_DATA.rglob("*.toml"))
    assert files
    for path in files:
        text = path.read_bytes().decode("utf-8", "surrogateescape")
        try:
            expected: Any = tomllib.loads(text)
        except (tomllib.TOMLDecodeError, ValueError):
            expected = None
        assert scenario_toml.fast_document(text) == expected, path


@needs_fast
@pytest.mark.parametrize("text", [
    "a = 18446744073709551615\nb = -9223372036854775808\nc = 0xffffffffffffffff",
    "a = 1.5\nb = inf\nc = -0.0\nd = 1e400\ne = 6.02e23\nf = 0.1",
    "a = 2024-01-01T00:00:00Z\nb = 2024-06-01T08:00:00.123456789+02:00\nc = 2024-01-01\n"
    "d = 07:32:00\ne = 1979-05-27 07:32:00",
    'a = "é\\u00e9\\U0001F600\\t"\nb = \'lit\\n\'\nc = """\nml\\\n  x"""\nd = \'\'\'\nraw\'\'\'',
    "a = { b = 1, c.d = [1, 'x', [2], { e = true }] }\n[x]\ny.z = 3\n[[p]]\n[[p]]\n[p.t]\n",
    '"quoted.key" = 1\n\'lit\' = 2\n"" = 3',
], ids=["integers", "floats", "date-times", "strings", "tables", "keys"])
def test_toml_rs_gives_the_values_tomllib_gives(text: str) -> None:
    fast = scenario_toml.fast_document(text)
    expected = tomllib.loads(text)
    assert fast == expected
    assert repr(fast) == repr(expected), "the same types, in the same order"


def test_the_fast_parser_is_skipped_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scenario_toml, "fast_loads", None)
    assert scenario_toml.fast_document("a = 1") is None
    assert parse_scenario('[[process]]\npid = 5\ncomm = "p"\n').process(5).comm == "p"


@pytest.mark.parametrize("before", [None, "5"])
def test_importing_the_parser_leaves_the_environment_as_it_was(before: str | None) -> None:
    """mimalloc's options are set for the import only: a child process the emulator starts
    later does not inherit them; a user's own setting stays."""
    names = sorted(scenario_toml._MIMALLOC_OPTIONS)
    env = {k: v for k, v in os.environ.items() if k not in names}
    if before is not None:
        env[names[0]] = before
    script = ("import os\nfrom tsemu.emulator.scenario import toml_fast as scenario_toml\n"
              f"print([os.environ.get(name) for name in {names!r}])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str([before, None])


@needs_fast
def test_a_big_document_frees_its_memory() -> None:
    """mimalloc, toml-rs's allocator, is told to give freed memory back at once: a big
    parse leaves the server's resident memory where it was (checked in a child process,
    whose RSS nothing else has touched)."""
    script = (
        "from bench.tables import scenario_text\n"
        "from tsemu.emulator.scenario import toml_fast as scenario_toml\n"
        "text = scenario_text(20_000)\n"
        "def rss():\n"
        "    for row in open('/proc/self/status'):\n"
        "        if row.startswith('VmRSS'):\n"
        "            return int(row.split()[1]) // 1024\n"
        "before = rss()\n"
        "document = scenario_toml.fast_document(text)\n"
        "assert len(document['process']) == 20_000\n"
        "del document\n"
        "print(rss() - before)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout) < 20, "MB still resident after the document is gone"


#: Texts whose [[process]] headers a big text would be cut at, in every way that matters: the
#: document of the pieces must be the whole text's, or none where tomllib refuses the text.
PIECES = {
    "plain": '[machine]\ncpus = 2\n\n[[process]]\npid = 5\ncomm = "a"\n\n[[process]]\n'
             'pid = 6\ncomm = "b"\n[process.io]\nread_bytes = 1\n[[process.thread]]\n'
             'tid = 7\n\n[[process]]\ncomm = "c"\n',
    "no preamble": '[[process]]\ncomm = "a"\n\n[[process]]\ncomm = "b"\n\n[[process]]\n'
                   'comm = "c"\n[machine]\ncpus = 3\n',
    "tables between": '[[process]]\ncomm = "a"\n[[timeline]]\nat = 1\n\n[[process]]\n'
                      'comm = "b"\n[[timeline]]\nat = 2\n\n[[process]]\ncomm = "c"\n',
    "a table declared twice": '[[process]]\ncomm = "a"\n[machine]\ncpus = 1\n\n'
                              '[[process]]\ncomm = "b"\n[machine]\ncpus = 2\n',
    "a table extended": '[[process]]\ncomm = "a"\n[a.b]\nx = 1\n\n[[process]]\n'
                        'comm = "b"\n[a.c]\nx = 2\n',
    "an inline array first": 'process = [{ comm = "a" }]\nx = 1\n\n[[process]]\ncomm = "b"\n'
                             '\n[[process]]\ncomm = "c"\n',
    "a header in a string": 'x = """\n\n[[process]]\ncomm = "not one"\n"""\n\n[[process]]\n'
                            'comm = "a"\nnote = """\n\n[[process]]\n"""\n\n[[process]]\n'
                            'comm = "b"\n',
    "a header in an array": 'x = [\n1,\n\n[[process]]\n]\n\n[[process]]\ncomm = "a"\n',
    "a single-bracket table after": '[[process]]\ncomm = "a"\n\n[[process]]\ncomm = "b"\n'
                                    '\n[[process]]\ncomm = "c"\n[process]\nx = 1\n',
    "windows newlines": '[[process]]\r\ncomm = "a"\r\n\r\n[[process]]\r\ncomm = "b"\r\n',
}


@needs_fast
@pytest.mark.parametrize("name", sorted(PIECES))
def test_a_text_read_in_pieces_is_the_whole_texts_document(name: str,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setattr(scenario_toml, "_PIECE", 8)  # every header a cut
    text = PIECES[name]
    try:
        expected: Any = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        expected = None
    document = scenario_toml.fast_document(text)
    assert document == expected
    assert repr(document) == repr(expected), "the same order of keys"


@needs_fast
def test_a_big_scenario_read_in_pieces_is_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.tables import scenario_text

    text = scenario_text(3_000)
    loads = scenario_toml.fast_loads
    assert loads is not None and len(text) > 2 * scenario_toml._PIECE
    pieces = scenario_toml._in_pieces(loads, text)
    assert pieces == tomllib.loads(text)
    monkeypatch.setattr(scenario_toml, "_PIECE", 1)
    assert scenario_toml._in_pieces(loads, text) == pieces


#: Pieces of TOML, right and wrong, for the differential test below.
TOML_KEYS = ["a", "b", '"k"', "'k'", "a.b", '"a"."b"', "a . b", "1", "_x", '"é"', '""',
             "process", "machine"]
TOML_VALUES = [
    "1", "-1", "+1", "0x1F", "0xff_ff", "0o7", "0b1", "1_0", "1.5", "1e5", "1E+5", "inf",
    "-inf", "+nan", "-0.0", "true", "false", '"s"', "'s'", '"""m\n"""', '"""\nm\\\n  x"""',
    "'''m\n'''", r'"\u00e9"', r'"\U0001F600"', r'"\t\n\\\""', "1979-05-27", "07:32:00",
    "07:32:00.123", "1979-05-27T07:32:00Z", "1979-05-27 07:32:00", "1979-05-27t07:32:00z",
    "1979-05-27T07:32:00.999999999+01:00", "1979-05-27T07:32:00-00:00", "[]", "[1,2]",
    '[1,"a",[2]]', "[\n1,\n2,\n]", "{}", "{a=1}", "{a.b=1, c=[1]}", "{ a = { b = 1 } }",
    "9223372036854775808", "18446744073709551615", "00", "1__2", "1.e5", '"""a""""',
    "'''a'''''", r'"\uD800"', '"a\tb"', "2000-02-29", "1900-02-29", "2000-13-01",
    "2000-01-01T25:00:00", "07:32", r'"\e"', r'"\x41"', "{\n a = 1 }", "{ a = 1, }"]
TOML_HEADERS = ["[t]", "[[t]]", "[t.u]", "[[t.u]]", '["t"]', "[ t . 'u' ]", "[a]", "[a.b]",
                "[process]", "[[process]]"]


@st.composite
def toml_texts(draw: st.DrawFn) -> str:
    """A few lines of TOML (key = value, table headers), now and then with a stray
    character: right and wrong texts alike."""
    lines = []
    for _ in range(draw(st.integers(1, 8))):
        if draw(st.integers(0, 4)) == 0:
            lines.append(draw(st.sampled_from(TOML_HEADERS)))
        else:
            key, value = draw(st.sampled_from(TOML_KEYS)), draw(st.sampled_from(TOML_VALUES))
            lines.append(f"{key} = {value}")
        lines.append(draw(st.sampled_from(["\n", "\r\n", " # c\n", "\n\n"])))
    text = "".join(lines)
    if draw(st.integers(0, 9)) == 0:
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(list("\"'[]{}=\n,#\\\x01 "))) + text[at:]
    return text


@needs_fast
@given(toml_texts())
@settings(max_examples=1000)
def test_the_fast_parser_never_reads_a_text_otherwise_than_tomllib(text: str) -> None:
    """It may leave a text to tomllib; when it reads one, it reads what tomllib reads."""
    try:
        expected: Any = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError):
        expected = None
    document = scenario_toml.fast_document(text)
    if document is not None:
        assert repr(document) == repr(expected)


@st.composite
def nested_values(draw: st.DrawFn, depth: int = 0) -> tuple[str, int]:
    """A TOML value as text, and how deeply arrays and inline tables nest in it; strings
    full of brackets, quotes and "#" to mislead a careless scan."""
    strings = st.sampled_from(['"]"', '"[[{"', "'}]'", '"\\"]"', '"#["', "'#'", '"\'["',
                               '"""]\n["""', "'''[[\n'''", '""', "''", '"a\\\\"'])
    kind = draw(st.sampled_from(["leaf", "leaf", "array", "table"]) if depth < 6
                else st.just("leaf"))
    if kind == "leaf":
        return draw(st.one_of(strings, st.sampled_from(["1", "true", "1.5", "2024-01-01"]))), 0
    items = draw(st.lists(nested_values(depth + 1), max_size=3))
    inner = max((d for _, d in items), default=0) + 1
    if kind == "array":
        newline = draw(st.sampled_from(["", "\n"]))
        return "[" + newline + ("," + newline).join(t for t, _ in items) + "]", inner
    if any("\n" in t for t, _ in items):  # an inline table stays on one line
        return "{}", 1
    return "{" + ", ".join(f"k{i} = {t}" for i, (t, _) in enumerate(items)) + "}", inner


@given(st.lists(nested_values(), min_size=1, max_size=4), st.booleans())
@settings(max_examples=300)
def test_the_nesting_bound_is_never_below_the_depth(values: list[tuple[str, int]],
                                                    comments: bool) -> None:
    text = "".join(f"v{i} = {t}{' # ]]]' if comments else ''}\n"
                   for i, (t, _) in enumerate(values))
    tomllib.loads(text)  # (valid TOML, or the strategy is wrong)
    depth = max(d for _, d in values)
    bound = scenario_toml.nesting_bound(text, 1000)
    assert depth <= bound <= 2 * depth + 2


def test_the_nesting_bound_of_a_big_scenario_is_found_quickly() -> None:
    from bench.tables import scenario_text

    text = scenario_text(2_000)
    assert 2 <= scenario_toml.nesting_bound(text, 64) <= scenario_toml.NESTING_LIMIT


# --- the quick [[process]] reader against the readers ---------------------------------------

#: Values for [[process]] keys: (right ones, wrong ones). The property test below picks
#: among them, a wrong one now and then.
PROCESS_VALUES: dict[str, tuple[list[str], list[str]]] = {
    "pid": (["1", "100", "101", "102", "4194303", "7000", "7001"],
            ["0", "-3", '"100"', "4194304", "true", "18446744073709551615"]),
    "comm": (['"a"', '"nginx"', '"sixteen-bytes-x"', '"ééé"', '"job{n}"'],
             ['""', '"sixteen-bytes-xx"', "5", '"éééééééé"', '"a\\u0000b"']),
    "ppid": (["0", "1", "4294967295", "300"], ["4294967296", "-1", '"1"']),
    "uid": (["0", "1000", "4294967295"], ["-1", "4294967296"]),
    "gid": (["0", "100"], ["1.0"]),
    "cgroup": (['"/a"', '"/a/b"', '"/"'], ['"a"', '"/a/../b"', "3"]),
    "state": (['"sleeping"', '"Sleeping"', '"io_wait"', '"stopped"'],
              ['"zombie"', '"runing"', "1"]),
    "cpu": (["0", "1", "2"], ["3", "-1", "true", "300"]),
    "start": (['"1s"', '"50s"', "0", '"99.5s"'], ['"200s"', "-5", "1.5", '"1x"']),
    "age": (['"1s"', "0", '"99s"', "7"], ['"200s"', '"-1s"']),
    "nice": (["-20", "19", "0", "-6"], ["20", "-21", '"0"']),
    "policy": (['"fifo"', '"SCHED_RR"', "3", "255", '"idle"'], ["256", '"bogus"', "true"]),
    "forked_no_exec": (["true", "false"], ["1"]),
    "superuser": (["true", "false"], ['"yes"']),
    "threads": (["1", "2", "4"], ["0", "100001", '"3"']),
    "delays": (['{ cpu = { count = 3, total = "1ms" } }',
                '{ cpu = { total = "1ms", count = 2 }, blkio = { count = 1 } }',
                '{ irq = { count = 1 }, cpu = { max = "1ms", total = "2ms", min = 5 } }'],
               ['{ bogus = { count = 1 } }', "5"]),
    "delays.cpu": (['{ count = 3, total = "1ms" }', '{ max_at = "90s" }',
                    "{ max_at = 2024-01-01T00:00:00Z }", "{ max_at = [1, 2] }",
                    '{ min = "1ms", max = "2ms", total = "2ms" }', "{}"],
                   ["{ count = -1 }", "{ total = 1.5 }", '{ max = "2ms", total = "1ms" }',
                    '{ min = "3ms", max = "2ms" }', "{ max_at = [1] }", "{ bogus = 1 }", '"x"',
                    "{ count = true }", '{ total = "18446744073709551615ns" }']),
    "delays.blkio": (['{ count = 1, total = 7 }', "{ min = 5, max = 5, total = 5 }"], []),
    "times": (['{ utime = "1ms", stime = 5 }', '{ run_virtual = "1h" }',
               '{ stime = "2ms", utime = "1.5us" }'],
              ['{ utime = "5 parsecs" }', "{ stime = -1 }", '{ utime = "1.5ns" }']),
    "io": (['{ read_bytes = "4KiB", write_bytes = 18446744073709551615 }',
            '{ read_char = "1.5KiB" }', "{ write_char = 0, read_char = 4096 }"],
           ["{ read_bytes = 18446744073709551616 }", '{ read_bytes = "1MB" }',
            "{ read_syscalls = 1.0 }"]),
    "io.read_bytes": (["0", "4096", '"1GiB"', "123456789"], ['"-1B"']),
    "memory": (['{ hiwater_rss = "1MiB", coremem = 5 }', '{ hiwater_vm = "1.5KiB" }'], []),
    "exe": (['{ dev = "8:1", inode = 5 }', "{ dev = 2049 }"], ['{ dev = "x" }']),
    "counters": (["{ swapin_delay_max_ts = [3, 4] }", "{ wpcopy_count = 9, nivcsw = 1 }"],
                 ["{ utime_ns = 5 }", "{ cpu_count = 1 }", "{ bogus_count = 1 }",
                  '{ cpu_delay_total = "2ms" }']),
    "faults": (["{ minflt = 5, majflt = 1 }"], []),
    "switches": (["{ nivcsw = 9, nvcsw = 8 }"], ["{ nvcsw = -8 }"]),
    "bogus": ([], ["1"]),
}


@st.composite
def process_tables(draw: st.DrawFn) -> str:
    """A few [[process]] tables (or an inline array of them), mostly right, some not."""
    tables = []
    for _ in range(draw(st.integers(1, 4))):
        keys = draw(st.lists(st.sampled_from(sorted(PROCESS_VALUES)), max_size=8, unique=True))
        if "bogus" in keys and draw(st.integers(0, 3)):
            keys.remove("bogus")
        if draw(st.integers(0, 29)):
            keys = ["comm", *[k for k in keys if k != "comm"]]
        if "delays" in keys:
            keys = [k for k in keys if not k.startswith("delays.")]
        if "io" in keys:
            keys = [k for k in keys if k != "io.read_bytes"]
        if "start" in keys and draw(st.integers(0, 4)):
            keys = [k for k in keys if k != "age"]
        pairs = []
        for key in keys:
            good, bad = PROCESS_VALUES[key]
            wrong = not good or (bad and draw(st.integers(0, 15)) == 0)
            pairs.append((key, draw(st.sampled_from(bad if wrong else good))))
        if draw(st.integers(0, 5)) == 0:
            pairs.append(("thread", '[{ tid = 900, comm = "t" }]'))
        tables.append(pairs)
    if draw(st.booleans()):
        return "".join("[[process]]\n" + "".join(f"{k} = {v}\n" for k, v in pairs)
                       for pairs in tables)
    return "process = [\n" + ",\n".join(
        "{ " + ", ".join(f"{k} = {v}" for k, v in pairs) + " }" for pairs in tables) + "\n]\n"


@needs_fast
@given(process_tables())
@settings(max_examples=400)
def test_quick_process_reading_is_the_readers_reading(text: str) -> None:
    header = "machine = { cpus = 3, start = \"100s\" }\n"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scenario_toml, "_PIECE", 1)  # a big text's way: in pieces
        assert_same(*both(patch, header + text))


def test_the_quick_reader_keeps_nothing_of_the_document() -> None:
    """As the readers (test_scenario.test_nothing_of_the_document_is_kept): every value the
    quick reader keeps is a copy, with either parser's document."""
    text = """
        [[process]]
        pid = 12345
        comm = "kept-comm"
        cgroup = "/kept/group"
        state = "sleeping"
        ppid = 4242
        uid = 1001
        nice = -10
        age = "20s"
        delays.cpu = { count = 777, total = 999999 }
        io = { read_bytes = 987654 }
        exe = { dev = 2049, inode = 7777777 }
        """
    documents = [tomllib.loads(text)]
    if scenario_toml.fast_loads is not None:
        documents.append(scenario_toml.fast_loads(text))
    for document in documents:
        reading = scenario_module._read_document(document, "d", text)
        scenario = scenario_module._conclude(reading)
        process = document["process"][0]
        spec = scenario.process(12345)
        kept = [(spec.pid, process["pid"]), (spec.comm, process["comm"]),
                (spec.cgroup, process["cgroup"]), (spec.ppid, process["ppid"]),
                (spec.uid, process["uid"]),
                (spec.counters["cpu_count"], process["delays"]["cpu"]["count"]),
                (spec.counters["cpu_delay_total"], process["delays"]["cpu"]["total"]),
                (spec.counters["read_bytes"], process["io"]["read_bytes"]),
                (spec.counters["ac_exe_inode"], process["exe"]["inode"])]
        for ours, theirs in kept:
            assert ours == theirs and ours is not theirs, ours
        assert spec.nice == -10 and spec.age_ns == 20 * 10**9


def test_a_pid_written_twice_is_reported_on_the_later_table_both_ways(
        monkeypatch: pytest.MonkeyPatch) -> None:
    text = ('[[process]]\npid = 7\ncomm = "a"\n[[process]]\ncomm = "b"\n'
            '[[process.thread]]\ntid = 9\n[[process]]\npid = 9\ncomm = "c"\n'
            '[[process]]\npid = 7\ncomm = "d"\n')
    fast, slow = both(monkeypatch, text)
    assert fast == slow == [
        "t.toml: process[2].pid: pid 9 is already taken by process[1].thread[0].tid "
        "(the entry begins at line 8)",
        "t.toml: process[3].pid: pid 7 is already taken by process[0].pid "
        "(the entry begins at line 11)"]


def test_the_quick_reader_reads_a_plain_table() -> None:
    scenario = parse_scenario('[[process]]\npid = 5\ncomm = "p"\nthreads = 3\n'
                              'times = { utime = "1ms" }\n')
    spec = scenario.process(5)
    assert (spec.comm, len(spec.tids), dict(spec.counters)) == ("p", 3, {"utime_ns": 10**6})
