"""The cpumask strings of REGISTER_CPUMASK / DEREGISTER_CPUMASK, read as the kernel reads them.

Everything about that syntax and its errors lives here, following taskstats.c's `parse()` and
lib/bitmap-str.c's `bitmap_parselist()` (checked against a 6.18 host, see tests/golden):

- an attribute's payload (`parse_cpumask_attr`) is copied by `nla_strscpy(data, na, len)`
  into a buffer of the payload's own length, which keeps at most len - 1 bytes: the last byte
  is dropped whether or not it is a NUL ("0-" without a NUL registers CPU 0, "0-1" without
  one is EINVAL), then the string ends at its first NUL;
- a payload longer than TASKSTATS_CPUMASK_MAXLEN = 100 + 6 * NR_CPUS bytes: E2BIG (NR_CPUS is
  the kernel's compile-time maximum, 256 on the measured host, not the number of CPUs);
- regions are separated by commas or white space, and a newline ends the list; an empty list
  is an empty mask, which registers nothing and succeeds;
- a region is `all`, `A`, `A-B` or either followed by `:USED/GROUP` (in each group of GROUP
  CPUs starting at A, the first USED are set); `N` stands for the last CPU;
- syntax errors, `A > B`, GROUP 0 and USED > GROUP: EINVAL; a number that does not fit 32 bits:
  EOVERFLOW; a CPU at or beyond the machine's CPU count: ERANGE. A region without a pattern
  has USED = GROUP = B + 1 computed in 32 bits, so B = 4294967295 makes GROUP 0: EINVAL
  before the range is looked at ("4294967295" is EINVAL, not ERANGE).

`parse_cpulist` reads a cpulist given as text (the control socket, scenario files): the
string up to its first NUL, with the same length rules.
"""

from __future__ import annotations

import errno

from .errors import WireError

#: NR_CPUS of the measured host's kernel (CONFIG_NR_CPUS=256).
DEFAULT_NR_CPUS_CONFIG = 256

#: The kernel's isspace(): ASCII white space and, in its Latin-1 table, NBSP (0xA0).
_SPACE = frozenset(b" \t\n\v\f\r\xa0")
_DIGITS = frozenset(b"0123456789")


def cpumask_maxlen(nr_cpus_config: int = DEFAULT_NR_CPUS_CONFIG) -> int:
    """TASKSTATS_CPUMASK_MAXLEN for a kernel built with NR_CPUS = `nr_cpus_config`."""
    return 100 + 6 * nr_cpus_config


def parse_cpumask_attr(payload: bytes, nr_cpus: int,
                       nr_cpus_config: int = DEFAULT_NR_CPUS_CONFIG) -> frozenset[int]:
    """The CPUs a REGISTER/DEREGISTER attribute's payload names on a machine of `nr_cpus`
    possible CPUs, as taskstats.c's `parse()` reads it (its last byte dropped, see above).

    Raises `WireError` with E2BIG, EINVAL, EOVERFLOW or ERANGE as the kernel answers."""
    _check_length(payload, nr_cpus_config)
    text = payload[:-1].split(b"\0", 1)[0]  # nla_strscpy(data, na, nla_len(na))
    return _Parser(text, nr_cpus).parse()


def parse_cpulist(payload: bytes, nr_cpus: int,
                  nr_cpus_config: int = DEFAULT_NR_CPUS_CONFIG) -> frozenset[int]:
    """The CPUs a cpulist given as text names (up to its first NUL), with the attribute's
    length rules. Raises `WireError` as `parse_cpumask_attr` does."""
    _check_length(payload, nr_cpus_config)
    text = payload.split(b"\0", 1)[0]
    return _Parser(text, nr_cpus).parse()


def _check_length(payload: bytes, nr_cpus_config: int) -> None:
    if len(payload) > cpumask_maxlen(nr_cpus_config):
        raise WireError(errno.E2BIG, f"cpumask of {len(payload)} bytes exceeds "
                        f"{cpumask_maxlen(nr_cpus_config)}")
    if len(payload) < 1:
        raise WireError(errno.EINVAL, "empty cpumask attribute")


class _Parser:
    """bitmap_parselist over `text` for a mask of `nbits` bits."""

    def __init__(self, text: bytes, nbits: int) -> None:
        self.s = text
        self.i = 0
        self.nbits = nbits

    def _peek(self) -> int:
        return self.s[self.i] if self.i < len(self.s) else 0

    def _end_of_str(self) -> bool:
        return self._peek() in (0, 0x0A)

    def _end_of_region(self) -> bool:
        c = self._peek()
        return c in _SPACE or c in (0, 0x2C)

    def _error(self, err: int, what: str) -> WireError:
        return WireError(err, f"cpulist {self.s!r} at byte {self.i}: {what}")

    def _number(self) -> int:
        if self._peek() == ord("N"):
            self.i += 1
            return self.nbits - 1
        start = self.i
        while self._peek() in _DIGITS:
            self.i += 1
        if self.i == start:
            raise self._error(errno.EINVAL, "a number or N expected")
        value = int(self.s[start : self.i])
        if value > 0xFFFFFFFF:
            raise self._error(errno.EOVERFLOW, f"{value} does not fit 32 bits")
        return value

    def parse(self) -> frozenset[int]:
        cpus: set[int] = set()
        while True:
            # bitmap_find_region: white space (newline included) and commas separate regions.
            while self._peek() in _SPACE or self._peek() == 0x2C:
                self.i += 1
            if self._end_of_str():
                return frozenset(cpus)
            start, end, used, group, last = self._region()
            if start > end or group == 0 or used > group:
                raise self._error(errno.EINVAL, f"bad region {start}-{end}:{used}/{group}")
            if end >= self.nbits:
                raise self._error(errno.ERANGE, f"CPU {end} beyond the machine's {self.nbits}")
            for base in range(start, end + 1, group):
                cpus.update(range(base, min(base + used, end + 1)))
            if last:
                return frozenset(cpus)

    def _region(self) -> tuple[int, int, int, int, bool]:
        """bitmap_parse_region: (start, end, used, group, whether the list ends here).

        A region without a pattern ends the list when a newline or the end follows it; one
        with a pattern never does (the kernel does not look), so "0-1:1/2\n3" goes on to 3
        while "0-1\n3" stops at the newline."""
        if self.s[self.i : self.i + 3].lower() == b"all":
            self.i += 3
            start, end = 0, self.nbits - 1
        else:
            start = self._number()
            if self._end_of_region():
                return start, start, *_whole(start), self._end_of_str()
            if self._peek() != ord("-"):
                raise self._error(errno.EINVAL, "'-', ',' or the end expected")
            self.i += 1
            end = self._number()
        if self._end_of_region():
            return start, end, *_whole(end), self._end_of_str()
        if self._peek() != ord(":"):
            raise self._error(errno.EINVAL, "':', ',' or the end expected")
        self.i += 1
        used = self._number()
        if self._peek() != ord("/"):
            raise self._error(errno.EINVAL, "'/' expected")
        self.i += 1
        group = self._number()
        return start, end, used, group, False


def _whole(end: int) -> tuple[int, int]:
    """(USED, GROUP) of a region without a pattern: every CPU, a group of B + 1 counted in
    the kernel's unsigned int (`r->off = r->end + 1`), so 4294967295 wraps to 0."""
    whole = (end + 1) & 0xFFFFFFFF
    return whole, whole
