"""The values of a scenario: durations, sizes, date-times, signals, policies, states, comms,
cgroup paths, devices, and how each is checked.

What lives here: one converter per kind of value, each taking what the document holds (TOML or
JSON) and returning the checked value, or raising `Bad` with the problem in words (the reader
adds the key path and the file; FORMAT.md is the format's reference). Also what a reading
shares (`shared_values`): every value kept is a copy of the document's, equal values are one
object, and each distinct string a converter reads is converted once. The control protocol
reads its arguments with the same converters. What must not: reading tables, key paths, the
scenario's structure (`reader`).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import difflib
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from fractions import Fraction
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar

from ..model.clock import NSEC_PER_SEC
from ..model.tasks import COMM_MAX, SIGNAL_MAX, U32_MAX, U64_MAX, TaskState

__all__ = [
    "DURATION_MAX", "format_duration", "parse_duration", "parse_size", "policy_number",
    "signal_number", "task_state",
]

#: The longest duration a scenario can name (the kernel's ktime is an s64 of ns).
DURATION_MAX = 2**63 - 1


# --- problems --------------------------------------------------------------------------------


class Bad(ValueError):
    """One value's problem, without its key path (the reader adds that)."""


def type_name(value: object) -> str:
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


def show(value: object) -> str:
    text = f'"{value}"' if isinstance(value, str) else repr(value)
    if isinstance(value, bool):
        text = "true" if value else "false"
    return text if len(text) <= 48 else text[:45] + "..."


def suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if close:
        return f"did you mean {show(close[0])}?"
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


# Values kept from a document are copies, never the document's own objects: the document of a
# big scenario fills hundreds of the allocator's 1 MiB arenas, and one object still alive in an
# arena keeps the whole arena resident after the document is dropped (keeping only the 100,000
# pid integers of a 100,000-process document keeps all of its 220 MB). `integer` and `string`,
# which every reading of an integer or a string goes through, hand out copies; equal values
# are shared while a document is read.


class Shared:
    """What one reading of a document shares: the copies of its integers and strings, by value
    (the same "5ms" in every process is one object), and what each converter made of each
    distinct string it was given (`remembers_strings`)."""

    __slots__ = ("values", "converted")

    def __init__(self) -> None:
        self.values: dict[int | str, Any] = {}
        self.converted: dict[Callable[[Any], Any], dict[str, Any]] = {}


_SHARED: contextvars.ContextVar[Shared | None] = contextvars.ContextVar(
    "tsemu_scenario_shared", default=None)


@contextlib.contextmanager
def shared_values() -> Iterator[Shared]:
    """The scope of one document's reading: values read inside it are shared (see above)."""
    shared = Shared()
    token = _SHARED.set(shared)
    try:
        yield shared
    finally:
        _SHARED.reset(token)


def own_int(value: int) -> int:
    """`value` as an object of its own, one per distinct integer of the document being read
    (small integers are the interpreter's; as it is outside a reading)."""
    if -5 <= value <= 256:
        return value
    shared = _SHARED.get()
    if shared is None:
        return value
    values = shared.values
    kept: int | None = values.get(value)
    if kept is None:
        kept = value + 0
        values[kept] = kept
    return kept


def own_str(value: str) -> str:
    """`value` as a copy of its own, one per distinct string of the document being read (as
    it is outside a reading: a control request's values)."""
    shared = _SHARED.get()
    if shared is None:
        return value
    values = shared.values
    kept: str | None = values.get(value)
    if kept is None:
        kept = value.encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass")
        values[kept] = kept
    return kept


R = TypeVar("R")


def remembers_strings(convert: Callable[[object], R]) -> Callable[[object], R]:
    """`convert`, made to convert each distinct string once per reading: a big scenario says
    "5ms" or "sleeping" a hundred thousand times. Only for converters whose result depends on
    nothing but the value, and is immutable; a string it refuses is refused every time."""
    def converter(value: object) -> R:
        if type(value) is str:
            shared = _SHARED.get()
            if shared is not None:
                seen = shared.converted.get(convert)
                if seen is None:
                    seen = shared.converted[convert] = {}
                result = seen.get(value, _UNSEEN)
                if result is _UNSEEN:
                    result = seen[own_str(value)] = convert(value)
                return result  # type: ignore[no-any-return]
        return convert(value)
    converter.__name__ = convert.__name__
    converter.__doc__ = convert.__doc__
    converter.__wrapped__ = convert  # type: ignore[attr-defined]
    return converter


_UNSEEN: Any = object()


def integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Bad(f"expected an integer, got {type_name(value)} {show(value)}")
    return own_int(value)


def ranged(low: int, high: int) -> Callable[[object], int]:
    """An integer in [low, high]."""
    def convert(value: object) -> int:
        if type(value) is int and low <= value <= high:
            return value if -5 <= value <= 256 else own_int(value)
        number = integer(value)
        if number < 0 <= low:
            raise Bad(f"must not be negative (got {number})")
        if not low <= number <= high:
            raise Bad(f"{number} is out of range {low}..{high}")
        return number
    return convert


u32 = ranged(0, U32_MAX)
u64 = ranged(0, U64_MAX)
nice_value = ranged(-20, 19)
thread_count = ranged(1, 100_000)


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise Bad(f"expected true or false, got {type_name(value)} {show(value)}")
    return value


def string(value: object) -> str:
    if not isinstance(value, str):
        raise Bad(f"expected a string, got {type_name(value)} {show(value)}")
    return own_str(value)


@remembers_strings
def parse_duration(value: object) -> int:
    """A duration in nanoseconds: an integer (ns) or a string with units ("1.5s", "1m30s",
    "250us", "3µs"). ValueError saying what is wrong otherwise."""
    if isinstance(value, float):
        raise Bad(f"a float ({value!r}) is not a duration: write an integer of nanoseconds "
                   f'or a string with a unit, like "{value!r}s"')
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise Bad(f"a duration must not be negative (got {value})")
        if value > DURATION_MAX:
            raise Bad(f"{value} ns is too long (at most {DURATION_MAX})")
        return own_int(value)
    if not isinstance(value, str):
        raise Bad(f"expected a duration (integer nanoseconds or a string like \"3ms\"), "
                   f"got {type_name(value)} {show(value)}")
    text = value.strip()
    simple = _SIMPLE_DURATION.fullmatch(text)
    if simple is not None:  # one part, a short number: integer arithmetic
        whole, decimals, unit = simple.groups()
        if decimals is None:
            ns = int(whole) * _DURATION_UNITS[unit]
            if ns <= DURATION_MAX:
                return own_int(ns)
        else:
            scaled, rest = divmod(int(whole + decimals) * _DURATION_UNITS[unit],
                                  10 ** len(decimals))
            if not rest and scaled <= DURATION_MAX:
                return own_int(scaled)
        # too long, or not whole: the general reading below says so
    if not text:
        raise Bad('an empty string is not a duration (write e.g. "0s")')
    if text.startswith("-"):
        raise Bad(f"{show(value)}: a duration must not be negative")
    total = Fraction(0)
    pos = 0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            rest = text[pos:].strip()
            if re.fullmatch(r"\d+(?:\.\d+)?", rest):
                problem = (f"{show(rest)} has no unit: write e.g. {show(rest + 's')}, "
                           f"{show(rest + 'ms')} or {show(rest + 'ns')}")
            else:
                problem = f"cannot read {show(rest)}"
            raise Bad(f"{show(value)} is not a duration: {problem} (units: ns, us, µs, ms, "
                       "s, m, min, h, d)")
        total += Fraction(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if total.denominator != 1:
        raise Bad(f"{show(value)} is not a whole number of nanoseconds")
    if total > DURATION_MAX:
        raise Bad(f"{show(value)} is too long (at most {DURATION_MAX} ns)")
    return own_int(int(total))


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
        return u64(value)
    if not isinstance(value, str):
        raise Bad(f"expected a size (an integer of {unit} or a string like \"4KiB\"), got "
                   f"{type_name(value)} {show(value)}")
    match = _SIZE.fullmatch(value)
    if match is None:
        raise Bad(f"{show(value)} is not a size (like \"512B\", \"4KiB\", \"1.5GiB\")")
    number, suffix = match.groups()
    if not suffix:
        raise Bad(f"{show(value)} has no unit: write an integer of {unit}, or add B, KiB, "
                   "MiB, GiB or TiB")
    if suffix not in _SIZE_UNITS:
        hint = suggest(suffix, list(_SIZE_UNITS))
        if suffix.upper() in ("K", "KB", "M", "MB", "G", "GB", "T", "TB"):
            hint = "use binary units: B, KiB, MiB, GiB, TiB"
        raise Bad(f"{show(value)}: unknown size unit {show(suffix)}; {hint}")
    whole, _, decimals = number.partition(".")
    if len(whole) <= 18 and len(decimals) <= 18:  # integer arithmetic, exactly the floor
        return u64(int(whole + decimals or "0") * _SIZE_UNITS[suffix]
                    // (10 ** len(decimals) * scale))
    amount = Fraction(number) * _SIZE_UNITS[suffix] / scale
    return u64(math.floor(amount))


@remembers_strings
def size_in_bytes(value: object) -> int:
    """A size in bytes (`parse_size`)."""
    return parse_size(value, "B")


@remembers_strings
def size_in_kib(value: object) -> int:
    """A size in KiB (`parse_size`)."""
    return parse_size(value, "KiB")


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def date_time(value: object) -> dt.datetime:
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise Bad(f"{show(value)} is not an RFC 3339 date-time "
                       "(like 2024-01-01T00:00:00Z)") from None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
    raise Bad(f"expected a date-time (like 2024-01-01T00:00:00Z), got {type_name(value)} "
               f"{show(value)}")


def _epoch_timespec(value: dt.datetime) -> tuple[int, int]:
    micros = (value - _EPOCH) // dt.timedelta(microseconds=1)
    seconds, rest = divmod(micros, 1_000_000)
    return seconds, rest * 1000


@remembers_strings
def boot_seconds(value: object) -> int:
    seconds = _epoch_timespec(date_time(value))[0]
    if not 0 <= seconds <= 2**63 - 1:
        raise Bad(f"{show(value)} is before 1970 or too far ahead")
    return seconds


def timestamp(boot_wall_seconds: int) -> Callable[[object], tuple[int, int]]:
    """A `<cat>_delay_max_ts` value: [tv_sec, tv_nsec], a date-time, or a duration since boot."""
    def convert(value: object) -> tuple[int, int]:
        if isinstance(value, list):
            if len(value) != 2:
                raise Bad(f"expected [tv_sec, tv_nsec], got an array of {len(value)}")
            sec = ranged(-(2**63), 2**63 - 1)(value[0])
            nsec = ranged(0, 999_999_999)(value[1])
            return sec, nsec
        if isinstance(value, (dt.datetime, dt.date, dt.time)) or (
                isinstance(value, str) and re.match(r"\s*\d{4}-\d\d-\d\d", value)):
            return _epoch_timespec(date_time(value))
        try:
            since_boot = parse_duration(value)
        except Bad:
            raise Bad(f"expected a date-time, a duration since boot or [tv_sec, tv_nsec], "
                       f"got {type_name(value)} {show(value)}") from None
        seconds, nsec = divmod(since_boot, NSEC_PER_SEC)
        return boot_wall_seconds + seconds, nsec
    return convert


@remembers_strings
def comm_name(value: object) -> str:
    text = string(value)
    if not text:
        raise Bad("comm must not be empty")
    if "\0" in text:
        raise Bad("comm must not contain NUL")
    raw = text.encode("utf-8", "replace")
    if len(raw) > COMM_MAX:
        kept = raw[:COMM_MAX].decode("utf-8", "replace")
        raise Bad(f"{show(text)} is {len(raw)} bytes; the kernel keeps {COMM_MAX} "
                   f"(TASK_COMM_LEN - 1): write {show(kept)}")
    return text


@remembers_strings
def cgroup_path(value: object) -> str:
    text = string(value)
    parts = text.split("/")
    if not text.startswith("/") or "\0" in text or (
            text != "/" and any(p in ("", ".", "..") for p in parts[1:])):
        raise Bad(f"{show(text)} is not a cgroup path: write an absolute path below the "
                   'hierarchy\'s root, like "/system.slice/nginx.service"')
    return text


_STATES = tuple(s.value for s in TaskState if s is not TaskState.ZOMBIE)
_STATE_NAMED: Mapping[str, TaskState] = MappingProxyType({name: TaskState(name)
                                                          for name in _STATES})


@remembers_strings
def task_state(value: object) -> TaskState:
    text = string(value)
    state = _STATE_NAMED.get(text) or _STATE_NAMED.get(text.lower())
    if state is not None:
        return state
    if text.lower() == "zombie":
        raise Bad("a task becomes a zombie by exiting (a leader whose threads live on); "
                   f"choose one of {', '.join(_STATES)}")
    raise Bad(f"unknown state {show(text)}; {suggest(text.lower(), _STATES)}")


_POLICIES: Mapping[str, int] = MappingProxyType({
    "SCHED_OTHER": 0, "SCHED_NORMAL": 0, "SCHED_FIFO": 1, "SCHED_RR": 2, "SCHED_BATCH": 3,
    "SCHED_IDLE": 5, "SCHED_DEADLINE": 6, "SCHED_EXT": 7,
})


@remembers_strings
def policy_number(value: object) -> int:
    """A scheduling policy (ac_sched) from a number 0-255 or a name ("SCHED_FIFO", "fifo")."""
    if isinstance(value, str):
        name = value.strip().upper()
        if not name.startswith("SCHED_"):
            name = "SCHED_" + name
        if name in _POLICIES:
            return _POLICIES[name]
        raise Bad(f"unknown policy {show(value)}; {suggest(name, list(_POLICIES))}")
    if isinstance(value, int) and not isinstance(value, bool):
        return ranged(0, 255)(value)
    raise Bad(f"expected a policy number or name, got {type_name(value)} {show(value)}")


#: x86_64 signal numbers (the numbers exit codes carry).
SIGNALS: Mapping[str, int] = MappingProxyType({
    "SIGHUP": 1, "SIGINT": 2, "SIGQUIT": 3, "SIGILL": 4, "SIGTRAP": 5, "SIGABRT": 6,
    "SIGIOT": 6, "SIGBUS": 7, "SIGFPE": 8, "SIGKILL": 9, "SIGUSR1": 10, "SIGSEGV": 11,
    "SIGUSR2": 12, "SIGPIPE": 13, "SIGALRM": 14, "SIGTERM": 15, "SIGSTKFLT": 16,
    "SIGCHLD": 17, "SIGCONT": 18, "SIGSTOP": 19, "SIGTSTP": 20, "SIGTTIN": 21, "SIGTTOU": 22,
    "SIGURG": 23, "SIGXCPU": 24, "SIGXFSZ": 25, "SIGVTALRM": 26, "SIGPROF": 27,
    "SIGWINCH": 28, "SIGIO": 29, "SIGPOLL": 29, "SIGPWR": 30, "SIGSYS": 31,
    "SIGRTMIN": 34, "SIGRTMAX": SIGNAL_MAX,
})


@remembers_strings
def signal_number(value: object) -> int:
    """A signal number 1-64 from a number or a name ("SIGKILL", "kill", "9", "SIGRTMIN+3")."""
    if isinstance(value, int) and not isinstance(value, bool):
        return ranged(1, SIGNAL_MAX)(value)
    if not isinstance(value, str):
        raise Bad(f"expected a signal number or name, got {type_name(value)} {show(value)}")
    name = value.strip().upper()
    if name.isdigit():
        return ranged(1, SIGNAL_MAX)(int(name))
    if not name.startswith("SIG"):
        name = "SIG" + name
    match = re.fullmatch(r"(SIGRTMIN|SIGRTMAX)([+-])(\d{1,2})", name)
    if match:
        base, sign, offset = match.groups()
        number = SIGNALS[base] + int(offset) * (1 if sign == "+" else -1)
        if SIGNALS["SIGRTMIN"] <= number <= SIGNAL_MAX:
            return number
        raise Bad(f"{show(value)} is outside SIGRTMIN..SIGRTMAX (34..64)")
    if name in SIGNALS:
        return SIGNALS[name]
    raise Bad(f"unknown signal {show(value)}; {suggest(name, list(SIGNALS))}")


@remembers_strings
def device(value: object) -> int:
    """ac_exe_dev: an integer as the kernel encodes it, or "MAJOR:MINOR" (huge_encode_dev)."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", value)
        if match is None:
            raise Bad(f"{show(value)} is not a device: write \"MAJOR:MINOR\" or an integer")
        major, minor = int(match.group(1)), int(match.group(2))
        if major >= 1 << 12 or minor >= 1 << 20:
            raise Bad(f"{show(value)}: major must be below 4096 and minor below 1048576")
        return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)
    return u64(value)


def comm_template(index: str, about: str) -> Callable[[object], str]:
    """A command name for many tasks: `{index}` stands for each one's index ("job{n}",
    "worker-{i}"); `about` says what is counted, for the error ("the job's index")."""
    def convert(value: object) -> str:
        text = string(value)
        try:
            text.format_map({index: 0})
        except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
            raise Bad(f"{show(text)}: only {{{index}}} ({about}) may appear in braces; write "
                      f"{{{{ and }}}} for literal braces ({exc})") from None
        return text
    return convert


def render_comm(template: str, index: str, number: int) -> str:
    """`template` for task `number` (see `comm_template`)."""
    if "{" not in template and "}" not in template:
        return template
    return template.format_map({index: number})


@remembers_strings
def errno_number(value: object) -> int:
    """An errno (a positive number, or a name: "EAGAIN", "ESRCH")."""
    import errno as errno_module

    if isinstance(value, str):
        name = value.strip().upper()
        number = getattr(errno_module, name, None)
        if not name.startswith("E") or not isinstance(number, int):
            raise Bad(f"unknown errno {show(value)}; "
                      f"{suggest(name, sorted(errno_module.errorcode.values()))}")
        return number
    return ranged(1, 4095)(value)


def share(value: object) -> float:
    """A share between 0.0 and 1.0 (a probability)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Bad(f"expected a share between 0.0 and 1.0, got {type_name(value)} "
                  f"{show(value)}")
    if not 0 <= value <= 1:
        raise Bad(f"{value} is not a share between 0.0 and 1.0")
    return float(value)


def cmdline_args(value: object) -> tuple[str, ...]:
    """A process's arguments: an array of strings, or one string split at its spaces."""
    if isinstance(value, str):
        args = tuple(value.split())
    elif isinstance(value, list) and all(isinstance(arg, str) for arg in value):
        args = tuple(value)
    else:
        raise Bad(f"cmdline is a string (split at spaces) or an array of strings, not "
                  f"{type_name(value)} {show(value)}")
    if any("\0" in arg for arg in args):
        raise Bad("an argument must not contain NUL")
    if sum(len(arg.encode()) + 1 for arg in args) > 65536:
        raise Bad("the arguments take more than 64 KiB")
    return tuple(own_str(arg) for arg in args)


#: I/O scheduling classes, as ioprio_get(2) numbers them.
IOPRIO_CLASSES: Mapping[str, int] = MappingProxyType({"none": 0, "rt": 1, "be": 2, "idle": 3})


@remembers_strings
def ioprio_value(value: object) -> int:
    """An I/O priority as ioprio_get(2) returns it (class << 13 | level): "be/4", "rt/0",
    "idle", "none", or that number."""
    if isinstance(value, int) and not isinstance(value, bool):
        return ranged(0, 0xFFFF)(value)
    text = string(value).strip().lower()
    name, _, level = text.partition("/")
    if name not in IOPRIO_CLASSES:
        raise Bad(f"unknown I/O priority {show(value)}; write be/0-7, rt/0-7, idle or none")
    if name in ("none", "idle"):
        if level:
            raise Bad(f"{name} takes no level: write {name!r}")
        return IOPRIO_CLASSES[name] << 13
    if not level.isdigit() or not 0 <= int(level) <= 7:
        raise Bad(f"{show(value)}: the level of {name} is 0-7 (be/4)")
    return IOPRIO_CLASSES[name] << 13 | int(level)


class Rate(NamedTuple):
    """A counter that moves with the clock: so much per second (a value "40MiB/s")."""

    per_second: int


def rated(convert: Callable[[object], Any], counts: bool) -> Callable[[object], Any]:
    """A counter's reader that also takes a rate: a value ending in "/s" ("40MiB/s",
    "500ms/s" for half a CPU, "12/s" for a count; a bare number is in the counter's own unit,
    bytes or nanoseconds: "0/s" stops a counter)."""
    def read(value: object) -> Any:
        if isinstance(value, str) and value.rstrip().endswith("/s"):
            amount = value.rstrip()[:-2].strip()
            if amount.isdigit():
                return Rate(u64(int(amount)))
            if counts:
                raise Bad(f"{show(value)}: a count's rate is a whole number per second")
            return Rate(convert(amount))
        return convert(value)
    return read


def recorded_message(value: object) -> bytes:
    """A `recorded_exit`'s message: base64 of one TASKSTATS_CMD_NEW netlink message, as a
    kernel sent it to a listener, with its AGGR_PID record first."""
    import base64
    import binascii

    from tsemu.wire import WireError, decode_genl, decode_taskstats_new, split_datagram
    from tsemu.wire.constants import TaskstatsCmd, TaskstatsType

    text = string(value)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Bad("message is not base64 (the netlink message's bytes)") from None
    messages = split_datagram(data)
    if len(messages) != 1 or messages[0].header.length != len(data):
        raise Bad(f"message holds {len(data)} bytes that are not one whole netlink message")
    try:
        genl = decode_genl(messages[0])
        records = decode_taskstats_new(genl) if genl.cmd == TaskstatsCmd.NEW else []
    except WireError as exc:
        raise Bad(f"message is not a taskstats event: {exc}") from None
    if not records or records[0].aggr != TaskstatsType.AGGR_PID:
        raise Bad("message is not a taskstats exit event (TASKSTATS_CMD_NEW whose first "
                  "record is AGGR_PID)")
    return data


def recorded_tid(message: bytes) -> int:
    """The task a checked `recorded_message` reports: its AGGR_PID record's pid."""
    from tsemu.wire import decode_genl, decode_taskstats_new, split_datagram

    return decode_taskstats_new(decode_genl(split_datagram(message)[0]))[0].id
