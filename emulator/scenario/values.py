"""The values of a scenario file: durations, sizes, date-times, signals, policies, states,
comms, cgroup paths, devices, and how each is checked.

What lives here: one converter per kind of value, each taking what the TOML document holds and
returning the checked value, or raising `_Bad` with the problem in words (the reader adds the
key path and the file; see `scenario`, whose docstring is the format's reference). Also the
sharing of values while a document is read (`_VALUES`, `_own_int`, `_own_str`): every value
kept is a copy of the document's, equal values one object. What must not: reading tables, key
paths, the scenario's structure (`scenario`).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import difflib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from types import MappingProxyType
from typing import Any

from ..model.clock import NSEC_PER_SEC
from ..model.tasks import COMM_MAX, SIGNAL_MAX, U32_MAX, U64_MAX, TaskState

__all__ = [
    "DURATION_MAX", "format_duration", "parse_duration", "parse_size", "policy_number",
    "signal_number", "task_state",
]

#: The longest duration a scenario can name (the kernel's ktime is an s64 of ns).
DURATION_MAX = 2**63 - 1


# --- problems --------------------------------------------------------------------------------


class _Bad(ValueError):
    """One value's problem, without its key path (the reader adds that)."""


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, dt.datetime):
        return "a date-time"
    if isinstance(value, dt.date):
        return "a date"
    if isinstance(value, dt.time):
        return "a time"
    return type(value).__name__


def _show(value: object) -> str:
    text = f'"{value}"' if isinstance(value, str) else repr(value)
    if isinstance(value, bool):
        text = "true" if value else "false"
    return text if len(text) <= 48 else text[:45] + "..."


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if close:
        return f"did you mean {_show(close[0])}?"
    return f"expected one of: {', '.join(choices)}"


# --- values ----------------------------------------------------------------------------------

_DURATION_UNITS: Mapping[str, int] = MappingProxyType({
    "ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": NSEC_PER_SEC,
    "m": 60 * NSEC_PER_SEC, "min": 60 * NSEC_PER_SEC, "h": 3600 * NSEC_PER_SEC,
    "d": 86400 * NSEC_PER_SEC,
})
_DURATION_PART = re.compile(
    r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(ns|us|µs|μs|ms|min|s|m|h|d)(?![A-Za-zµμ])")
_SIZE_UNITS: Mapping[str, int] = MappingProxyType({
    "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4,
})
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*([A-Za-z]*)\s*")
#: The common forms, read without Fraction: one part, a number of at most 18 digits before
#: and after the point (longer ones take the general path, which bounds them the same way).
_SIMPLE_DURATION = re.compile(r"(\d{1,18})(?:\.(\d{1,18}))?\s*(ns|us|µs|μs|ms|min|s|m|h|d)")


# Values kept from a TOML document are copies, never the document's own objects: the
# document of a big scenario fills hundreds of the allocator's 1 MiB arenas, and one object
# still alive in an arena keeps the whole arena resident after the document is dropped
# (keeping only the 100,000 pid integers of a 100,000-process document keeps all of its
# 220 MB). `_integer` and `_string`, which every reading of an integer or a string goes
# through, hand out copies; strings are shared by value while a document is read.

#: While a document is read: the copies of the integers and strings read from it, by value,
#: so that equal values are one object (the same "5ms" in every process, say).
_VALUES: contextvars.ContextVar[dict[int | str, Any] | None] = contextvars.ContextVar(
    "tsemu_scenario_values", default=None)


def _own_int(value: int) -> int:
    """`value` as an object of its own, one per distinct integer of the document being read
    (small integers are the interpreter's; as it is outside a reading)."""
    if -5 <= value <= 256:
        return value
    values = _VALUES.get()
    if values is None:
        return value
    shared: int | None = values.get(value)
    if shared is None:
        shared = value + 0
        values[shared] = shared
    return shared


def _own_str(value: str) -> str:
    """`value` as a copy of its own, one per distinct string of the document being read (as
    it is outside a reading: a control request's values)."""
    values = _VALUES.get()
    if values is None:
        return value
    shared: str | None = values.get(value)
    if shared is None:
        shared = value.encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass")
        values[shared] = shared
    return shared


def _integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(f"expected an integer, got {_toml_type(value)} {_show(value)}")
    return _own_int(value)


def _ranged(low: int, high: int) -> Callable[[object], int]:
    def convert(value: object) -> int:
        number = _integer(value)
        if number < 0 <= low:
            raise _Bad(f"must not be negative (got {number})")
        if not low <= number <= high:
            raise _Bad(f"{number} is out of range {low}..{high}")
        return number
    return convert


_u32 = _ranged(0, U32_MAX)
_u64 = _ranged(0, U64_MAX)
_nice = _ranged(-20, 19)
_thread_count = _ranged(1, 100_000)


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"expected true or false, got {_toml_type(value)} {_show(value)}")
    return value


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise _Bad(f"expected a string, got {_toml_type(value)} {_show(value)}")
    return _own_str(value)


def parse_duration(value: object) -> int:
    """A duration in nanoseconds: an integer (ns) or a string with units ("1.5s", "1m30s",
    "250us", "3µs"). ValueError saying what is wrong otherwise."""
    if isinstance(value, float):
        raise _Bad(f"a float ({value!r}) is not a duration: write an integer of nanoseconds "
                   f'or a string with a unit, like "{value!r}s"')
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise _Bad(f"a duration must not be negative (got {value})")
        if value > DURATION_MAX:
            raise _Bad(f"{value} ns is too long (at most {DURATION_MAX})")
        return _own_int(value)
    if not isinstance(value, str):
        raise _Bad(f"expected a duration (integer nanoseconds or a string like \"3ms\"), "
                   f"got {_toml_type(value)} {_show(value)}")
    text = value.strip()
    simple = _SIMPLE_DURATION.fullmatch(text)
    if simple is not None:  # one part, a short number: integer arithmetic
        whole, decimals, unit = simple.groups()
        if decimals is None:
            ns = int(whole) * _DURATION_UNITS[unit]
            if ns <= DURATION_MAX:
                return _own_int(ns)
        else:
            scaled, rest = divmod(int(whole + decimals) * _DURATION_UNITS[unit],
                                  10 ** len(decimals))
            if not rest and scaled <= DURATION_MAX:
                return _own_int(scaled)
        # too long, or not whole: the general reading below says so
    if not text:
        raise _Bad('an empty string is not a duration (write e.g. "0s")')
    if text.startswith("-"):
        raise _Bad(f"{_show(value)}: a duration must not be negative")
    total = Fraction(0)
    pos = 0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            rest = text[pos:].strip()
            if re.fullmatch(r"\d+(?:\.\d+)?", rest):
                problem = f"{_show(rest)} has no unit"
            else:
                problem = f"cannot read {_show(rest)}"
            raise _Bad(f"{_show(value)} is not a duration: {problem} (units: ns, us, µs, ms, "
                       "s, m, min, h, d)")
        total += Fraction(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if total.denominator != 1:
        raise _Bad(f"{_show(value)} is not a whole number of nanoseconds")
    if total > DURATION_MAX:
        raise _Bad(f"{_show(value)} is too long (at most {DURATION_MAX} ns)")
    return _own_int(int(total))


def format_duration(ns: int) -> str:
    """`ns` as the shortest exact duration string `parse_duration` reads back ("1500ms")."""
    if ns == 0:
        return "0s"
    for unit in ("h", "m", "s", "ms", "us"):
        size = _DURATION_UNITS[unit]
        if ns % size == 0:
            return f"{ns // size}{unit}"
    return f"{ns}ns"


def parse_size(value: object, unit: str = "B") -> int:
    """A size in `unit` ("B" or "KiB"): an integer in that unit, or a string with a binary unit
    ("4KiB", "1.5MiB", "2GiB"), rounded down to a whole number of `unit`."""
    scale = _SIZE_UNITS[unit]
    if isinstance(value, int) and not isinstance(value, bool):
        return _u64(value)
    if not isinstance(value, str):
        raise _Bad(f"expected a size (an integer of {unit} or a string like \"4KiB\"), got "
                   f"{_toml_type(value)} {_show(value)}")
    match = _SIZE.fullmatch(value)
    if match is None:
        raise _Bad(f"{_show(value)} is not a size (like \"512B\", \"4KiB\", \"1.5GiB\")")
    number, suffix = match.groups()
    if not suffix:
        raise _Bad(f"{_show(value)} has no unit: write an integer of {unit}, or add B, KiB, "
                   "MiB, GiB or TiB")
    if suffix not in _SIZE_UNITS:
        hint = _suggest(suffix, list(_SIZE_UNITS))
        if suffix.upper() in ("K", "KB", "M", "MB", "G", "GB", "T", "TB"):
            hint = "use binary units: B, KiB, MiB, GiB, TiB"
        raise _Bad(f"{_show(value)}: unknown size unit {_show(suffix)}; {hint}")
    whole, _, decimals = number.partition(".")
    if len(whole) <= 18 and len(decimals) <= 18:  # integer arithmetic, exactly the floor
        return _u64(int(whole + decimals or "0") * _SIZE_UNITS[suffix]
                    // (10 ** len(decimals) * scale))
    amount = Fraction(number) * _SIZE_UNITS[suffix] / scale
    return _u64(math.floor(amount))


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _datetime(value: object) -> dt.datetime:
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise _Bad(f"{_show(value)} is not an RFC 3339 date-time "
                       "(like 2024-01-01T00:00:00Z)") from None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
    raise _Bad(f"expected a date-time (like 2024-01-01T00:00:00Z), got {_toml_type(value)} "
               f"{_show(value)}")


def _epoch_timespec(value: dt.datetime) -> tuple[int, int]:
    micros = (value - _EPOCH) // dt.timedelta(microseconds=1)
    seconds, rest = divmod(micros, 1_000_000)
    return seconds, rest * 1000


def _boot_seconds(value: object) -> int:
    seconds = _epoch_timespec(_datetime(value))[0]
    if not 0 <= seconds <= 2**63 - 1:
        raise _Bad(f"{_show(value)} is before 1970 or too far ahead")
    return seconds


def _timestamp(boot_wall_seconds: int) -> Callable[[object], tuple[int, int]]:
    """A `<cat>_delay_max_ts` value: [tv_sec, tv_nsec], a date-time, or a duration since boot."""
    def convert(value: object) -> tuple[int, int]:
        if isinstance(value, list):
            if len(value) != 2:
                raise _Bad(f"expected [tv_sec, tv_nsec], got an array of {len(value)}")
            sec = _ranged(-(2**63), 2**63 - 1)(value[0])
            nsec = _ranged(0, 999_999_999)(value[1])
            return sec, nsec
        if isinstance(value, (dt.datetime, dt.date, dt.time)) or (
                isinstance(value, str) and re.match(r"\s*\d{4}-\d\d-\d\d", value)):
            return _epoch_timespec(_datetime(value))
        try:
            since_boot = parse_duration(value)
        except _Bad:
            raise _Bad(f"expected a date-time, a duration since boot or [tv_sec, tv_nsec], "
                       f"got {_toml_type(value)} {_show(value)}") from None
        seconds, nsec = divmod(since_boot, NSEC_PER_SEC)
        return boot_wall_seconds + seconds, nsec
    return convert


def _comm(value: object) -> str:
    text = _string(value)
    if not text:
        raise _Bad("comm must not be empty")
    if "\0" in text:
        raise _Bad("comm must not contain NUL")
    raw = text.encode("utf-8", "replace")
    if len(raw) > COMM_MAX:
        kept = raw[:COMM_MAX].decode("utf-8", "replace")
        raise _Bad(f"{_show(text)} is {len(raw)} bytes; the kernel keeps {COMM_MAX} "
                   f"(TASK_COMM_LEN - 1): write {_show(kept)}")
    return text


def _cgroup(value: object) -> str:
    text = _string(value)
    parts = text.split("/")
    if not text.startswith("/") or "\0" in text or (
            text != "/" and any(p in ("", ".", "..") for p in parts[1:])):
        raise _Bad(f"{_show(text)} is not a cgroup path: write an absolute path below the "
                   'hierarchy\'s root, like "/system.slice/nginx.service"')
    return text


_STATES = tuple(s.value for s in TaskState if s is not TaskState.ZOMBIE)
_STATE_NAMED: Mapping[str, TaskState] = MappingProxyType({name: TaskState(name)
                                                          for name in _STATES})


def task_state(value: object) -> TaskState:
    text = _string(value)
    state = _STATE_NAMED.get(text) or _STATE_NAMED.get(text.lower())
    if state is not None:
        return state
    if text.lower() == "zombie":
        raise _Bad("a task becomes a zombie by exiting (a leader whose threads live on); "
                   f"choose one of {', '.join(_STATES)}")
    raise _Bad(f"unknown state {_show(text)}; {_suggest(text.lower(), _STATES)}")


_POLICIES: Mapping[str, int] = MappingProxyType({
    "SCHED_OTHER": 0, "SCHED_NORMAL": 0, "SCHED_FIFO": 1, "SCHED_RR": 2, "SCHED_BATCH": 3,
    "SCHED_IDLE": 5, "SCHED_DEADLINE": 6, "SCHED_EXT": 7,
})


def policy_number(value: object) -> int:
    """A scheduling policy (ac_sched) from a number 0-255 or a name ("SCHED_FIFO", "fifo")."""
    if isinstance(value, str):
        name = value.strip().upper()
        if not name.startswith("SCHED_"):
            name = "SCHED_" + name
        if name in _POLICIES:
            return _POLICIES[name]
        raise _Bad(f"unknown policy {_show(value)}; {_suggest(name, list(_POLICIES))}")
    if isinstance(value, int) and not isinstance(value, bool):
        return _ranged(0, 255)(value)
    raise _Bad(f"expected a policy number or name, got {_toml_type(value)} {_show(value)}")


#: x86_64 signal numbers (the numbers exit codes carry).
_SIGNALS: Mapping[str, int] = MappingProxyType({
    "SIGHUP": 1, "SIGINT": 2, "SIGQUIT": 3, "SIGILL": 4, "SIGTRAP": 5, "SIGABRT": 6,
    "SIGIOT": 6, "SIGBUS": 7, "SIGFPE": 8, "SIGKILL": 9, "SIGUSR1": 10, "SIGSEGV": 11,
    "SIGUSR2": 12, "SIGPIPE": 13, "SIGALRM": 14, "SIGTERM": 15, "SIGSTKFLT": 16,
    "SIGCHLD": 17, "SIGCONT": 18, "SIGSTOP": 19, "SIGTSTP": 20, "SIGTTIN": 21, "SIGTTOU": 22,
    "SIGURG": 23, "SIGXCPU": 24, "SIGXFSZ": 25, "SIGVTALRM": 26, "SIGPROF": 27,
    "SIGWINCH": 28, "SIGIO": 29, "SIGPOLL": 29, "SIGPWR": 30, "SIGSYS": 31,
    "SIGRTMIN": 34, "SIGRTMAX": SIGNAL_MAX,
})


def signal_number(value: object) -> int:
    """A signal number 1-64 from a number or a name ("SIGKILL", "kill", "9", "SIGRTMIN+3")."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _ranged(1, SIGNAL_MAX)(value)
    if not isinstance(value, str):
        raise _Bad(f"expected a signal number or name, got {_toml_type(value)} {_show(value)}")
    name = value.strip().upper()
    if name.isdigit():
        return _ranged(1, SIGNAL_MAX)(int(name))
    if not name.startswith("SIG"):
        name = "SIG" + name
    match = re.fullmatch(r"(SIGRTMIN|SIGRTMAX)([+-])(\d{1,2})", name)
    if match:
        base, sign, offset = match.groups()
        number = _SIGNALS[base] + int(offset) * (1 if sign == "+" else -1)
        if _SIGNALS["SIGRTMIN"] <= number <= SIGNAL_MAX:
            return number
        raise _Bad(f"{_show(value)} is outside SIGRTMIN..SIGRTMAX (34..64)")
    if name in _SIGNALS:
        return _SIGNALS[name]
    raise _Bad(f"unknown signal {_show(value)}; {_suggest(name, list(_SIGNALS))}")


def _device(value: object) -> int:
    """ac_exe_dev: an integer as the kernel encodes it, or "MAJOR:MINOR" (huge_encode_dev)."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", value)
        if match is None:
            raise _Bad(f"{_show(value)} is not a device: write \"MAJOR:MINOR\" or an integer")
        major, minor = int(match.group(1)), int(match.group(2))
        if major >= 1 << 12 or minor >= 1 << 20:
            raise _Bad(f"{_show(value)}: major must be below 4096 and minor below 1048576")
        return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)
    return _u64(value)
