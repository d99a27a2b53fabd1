"""`MessageRun`: messages of one length end to end, which must act as the list of them
wherever a list would do (indexing, slicing, iteration, joining), and send as it lies."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tsemu.wire.runs import MessageRun

_runs = st.integers(1, 40).flatmap(
    lambda size: st.lists(st.binary(min_size=size, max_size=size), max_size=20).map(
        lambda messages: (size, messages)))


@given(_runs, st.integers(-25, 25), st.integers(-25, 25))
def test_a_run_is_the_list_of_its_messages(run: tuple[int, list[bytes]], a: int,
                                           b: int) -> None:
    size, messages = run
    whole = MessageRun(b"".join(messages), size)
    assert list(whole) == messages and len(whole) == len(messages)
    part = whole[a:b]
    assert list(part) == messages[a:b]
    assert bytes(part.body()) == b"".join(messages[a:b])
    if len(messages) >= 2:
        assert bytes(whole.tail(2).body(3)) == b"".join(messages[2:5])
    with pytest.raises(ValueError):
        whole.tail(len(messages) + 1)
    for i in range(-len(messages), len(messages)):
        assert whole[i] == messages[i]
    with pytest.raises(IndexError):
        whole[len(messages)]


@given(st.lists(_runs, max_size=4), st.booleans())
def test_runs_and_lists_join_when_they_have_one_length(runs: list[tuple[int, list[bytes]]],
                                                        as_runs: bool) -> None:
    parts = [MessageRun(b"".join(m), size) if as_runs else m for size, m in runs]
    everything = [message for _, m in runs for message in m]
    joined = MessageRun.join(parts)
    if len({len(message) for message in everything}) == 1:
        assert joined is not None and list(joined) == everything
    else:
        assert joined is None


def test_a_run_refuses_what_is_no_run() -> None:
    with pytest.raises(ValueError):
        MessageRun(b"12345", 2)
    with pytest.raises(ValueError):
        MessageRun(b"1234", 0)
    with pytest.raises(ValueError):
        MessageRun(b"1234", 2, 1, 2)
    with pytest.raises(ValueError):
        MessageRun(b"1234", 2)[::2]
