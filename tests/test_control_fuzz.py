"""The control protocol under arbitrary input: every line gets a JSON answer, no line ends the
emulator, and the machine stays consistent (hypothesis; derandomized in CI like the rest)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tsemu.emulator.scenario import parse_scenario
from tsemu.emulator.shell.control import OPS, answer
from tsemu.emulator.shell.runner import Emulator

SCENARIO = """
[machine]
cpus = 2
clock = "virtual"
[[process]]
pid = 100
comm = "app"
threads = 2
[[timeline]]
at = "1s"
exit_group = { pid = 100 }
"""

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=10),
              st.sampled_from(["SIGKILL", "3ms", "0-1", "sleeping", "x" * 40, "-1", "1e9"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=40))
    if kind == 1:
        depth = draw(st.integers(1, 5000))
        return b'{"op": "ps", "x": ' + b"[" * depth + b"]" * depth + b"}"
    if kind == 2:
        return draw(st.sampled_from([b"NaN", b"Infinity", b'{"op":"exit","pid":1e400}',
                                     b'{"op": "advance", "seconds": 1e300}', b"{}", b"[]"]))
    op = draw(st.sampled_from([*OPS, "bogus"]))
    names = [arg.name for arg in OPS.get(op, ((), None))[0]] + ["pid", "junk"]
    args = draw(st.dictionaries(st.sampled_from(names), json_values, max_size=4))
    if op in ("advance", "wait_listener") and "seconds" not in args:
        args["timeout"] = 0  # (a listener never comes: do not wait for it)
    if op == "storm":
        args["count"] = draw(st.integers(0, 300))
    return json.dumps({"op": op, **args}).encode()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(requests(), min_size=1, max_size=12))
def test_any_request_is_answered_and_the_machine_goes_on(tmp_path_factory: Any,
                                                         lines: list[bytes]) -> None:
    directory = Path(tmp_path_factory.mktemp("ctl", numbered=True))

    async def main() -> None:
        emulator = Emulator(parse_scenario(SCENARIO), directory / "genl.sock")
        async with trio.open_nursery() as nursery:
            await nursery.start(emulator.run)
            for line in lines:
                with trio.fail_after(20):
                    reply = await answer(emulator, line)
                assert isinstance(reply, dict) and isinstance(reply["ok"], bool), reply
                json.dumps(reply)  # an answer is JSON
            # still whole: every live task is in a group, the control socket answers
            table = emulator.table
            for task in table:
                assert task.tid in table.group(task.tgid).tids
            assert (await answer(emulator, b'{"op": "now"}'))["ok"]
            nursery.cancel_scope.cancel()

    trio.run(main)
