"""What a new user trips over, made plain: a time without a unit is an error that suggests
one, and `listen` says how a thread killed by its process's exit_group ended."""

from __future__ import annotations

import pytest

from tsemu.cli.client_verbs import exit_status
from tsemu.emulator.scenario import ScenarioError, parse_duration, parse_scenario


@pytest.mark.parametrize("text", [
    "[[timeline]]\nat = 3\nexit = { pid = 1 }\n",
    '[[fault]]\nkind = "drop"\nuntil = 250\n',
    '[[generator]]\ncount = 3\nduration = 2\n',
])
def test_a_bare_number_for_a_time_in_toml_suggests_the_unit(text: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, "s.toml")
    message = str(caught.value)
    assert "has no unit: write" in message and 's", "' in message and 'ns"' in message


def test_zero_needs_no_unit_and_json_keeps_nanoseconds() -> None:
    parse_scenario("[machine]\nstart = 0\n", "s.toml")
    scenario = parse_scenario('{"timeline": [{"at": 5, "exit": {"pid": 1}}], '
                              '"process": [{"pid": 1, "comm": "init"}]}', "s.json")
    assert scenario.timeline[0].at_ns == 5


def test_a_bare_number_on_the_command_line_suggests_the_unit() -> None:
    with pytest.raises(ValueError, match='"3" has no unit: write e.g. "3s", "3ms" or "3ns"'):
        parse_duration("3")


@pytest.mark.parametrize(("code", "flag", "said"), [
    (0x300, 0x00, "exit 3"),
    (9, 0x10, "signal 9 (SIGKILL)"),
    (0x8B, 0x18, "signal 11 (SIGSEGV), core dumped"),
    # a thread zapped by another's exit_group(0): AXSIG, and the group's code
    (0, 0x10 | 0x20, "exit 0 (killed by its group's exit)"),
    (0x200, 0x10, "exit 2 (killed by its group's exit)"),
])
def test_listen_says_how_a_task_ended(code: int, flag: int, said: str) -> None:
    assert exit_status({"ac_exitcode": code, "ac_flag": flag}) == said
