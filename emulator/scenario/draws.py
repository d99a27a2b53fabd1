"""Values drawn at random, for populations and generators: ranges and distributions.

What lives here: how a drawn value is written and read (``[min, max]``, or a table with
``distribution = "uniform" | "normal" | "lognormal" | "choice"``) and how each is drawn from
a seeded `random.Random`. A population or a generator draws its values in a fixed order, so
the same seed always makes the same machine. What must not: which keys may be drawn and in
what order (`reader`, `generators`).

Drawing rules. ``[min, max]`` and ``uniform`` draw an integer in [min, max], both included
(from one `Random.random()`, or `Random.randrange` for ranges wider than 2**52). ``normal``
(mean, stddev) and ``lognormal`` (median, sigma: the median is exp(mu), sigma the standard
deviation of the logarithm) draw a real number, rounded to the nearest integer; ``min`` and
``max`` bound them (defaults: the key's own bounds): a draw outside is drawn again, up to 100
times, then clamped. ``choice`` picks one of ``values``,
with ``weights`` if given (relative, not necessarily summing to 1).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

from .schema import DISTRIBUTIONS
from .values import Bad, show, suggest, type_name

#: Draws outside a normal or lognormal's bounds are drawn again this many times at most.
REDRAWS = 100


class Uniform:
    """An integer in [low, high], both included."""

    __slots__ = ("low", "high", "_span")

    def __init__(self, low: int, high: int) -> None:
        self.low = low
        self.high = high
        self._span = high - low + 1

    def draw(self, rng: random.Random) -> int:
        if self._span <= _EXACT_SPAN:  # (a float draw is exact and uniform here, and cheaper)
            return self.low + int(rng.random() * self._span)
        return self.low + rng.randrange(self._span)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Uniform) and (self.low, self.high) == (other.low, other.high)

    def __hash__(self) -> int:
        return hash((Uniform, self.low, self.high))

    def __repr__(self) -> str:
        return f"Uniform({self.low}, {self.high})"


#: Ranges up to this size are drawn from one `random()` (53 bits), wider ones by `randrange`.
_EXACT_SPAN = 1 << 52


class Normal:
    """A normal distribution's draw, rounded, within [low, high]."""

    __slots__ = ("mean", "stddev", "low", "high")

    def __init__(self, mean: float, stddev: float, low: int, high: int) -> None:
        self.mean = mean
        self.stddev = stddev
        self.low = low
        self.high = high

    def draw(self, rng: random.Random) -> int:
        low, high = self.low - 0.5, self.high + 0.5
        value = 0.0
        for _ in range(REDRAWS):
            value = rng.gauss(self.mean, self.stddev)
            if low <= value < high:
                return round(value)
        return _clamped(value, self.low, self.high)

    def __repr__(self) -> str:
        return f"Normal({self.mean}, {self.stddev}, {self.low}, {self.high})"


class LogNormal:
    """A lognormal distribution's draw (median exp(mu), sigma), rounded, within [low, high]."""

    __slots__ = ("median", "sigma", "low", "high", "_mu")

    def __init__(self, median: float, sigma: float, low: int, high: int) -> None:
        self.median = median
        self.sigma = sigma
        self.low = low
        self.high = high
        self._mu = math.log(median)

    def draw(self, rng: random.Random) -> int:
        low, high = self.low - 0.5, self.high + 0.5
        value = 0.0
        for _ in range(REDRAWS):
            value = math.exp(rng.gauss(self._mu, self.sigma))
            if low <= value < high:
                return round(value)
        return _clamped(value, self.low, self.high)

    def __repr__(self) -> str:
        return f"LogNormal({self.median}, {self.sigma}, {self.low}, {self.high})"


class Choice:
    """One of `values`, with cumulative weights (None: all alike)."""

    __slots__ = ("values", "cum_weights")

    def __init__(self, values: tuple[Any, ...],
                 cum_weights: tuple[float, ...] | None = None) -> None:
        self.values = values
        self.cum_weights = cum_weights

    def draw(self, rng: random.Random) -> Any:
        if self.cum_weights is None:
            return self.values[int(rng.random() * len(self.values))]
        return rng.choices(self.values, cum_weights=self.cum_weights)[0]

    def __repr__(self) -> str:
        return f"Choice({self.values}, {self.cum_weights})"


def _clamped(value: float, low: int, high: int) -> int:
    return min(max(round(value), low), high) if math.isfinite(value) else low


Draw = Uniform | Normal | LogNormal | Choice


def drawn(value: Any, rng: random.Random) -> Any:
    """`value` itself, or a draw of it if it is a `Draw`."""
    return value.draw(rng) if isinstance(value, _DRAWS) else value


_DRAWS = (Uniform, Normal, LogNormal, Choice)


def is_drawn(value: object) -> bool:
    return isinstance(value, _DRAWS)


def drawable(convert: Callable[[object], int], low: int, high: int, *,
             spread: Callable[[object], float] | None = None
             ) -> Callable[[object], int | Draw]:
    """A reader of a numeric value that may also be drawn: a constant (`convert`), a range
    ``[min, max]``, or a distribution table. `low` and `high` bound the key's values (and so
    a distribution's default min and max); `spread` reads a normal's stddev (default:
    `convert`: a duration's is a duration, but a nice value's spread need not be one)."""
    def read(value: object) -> int | Draw:
        if isinstance(value, list):
            if len(value) != 2:
                raise Bad(f"a range is [min, max], got an array of {len(value)}")
            lower, upper = convert(value[0]), convert(value[1])
            if lower > upper:
                raise Bad(f"range {show(value)} has min above max")
            return Uniform(lower, upper)
        if isinstance(value, dict):
            return _distribution(value, convert, low, high, spread or convert)
        return convert(value)
    return read


def number(value: object) -> float:
    """A spread: a number of at least 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Bad(f"expected a number, got {type_name(value)} {show(value)}")
    if not (math.isfinite(value) and value >= 0):
        raise Bad(f"expected a number of at least 0, not {show(value)}")
    return float(value)


def choosable(convert: Callable[[object], Any]) -> Callable[[object], Any]:
    """A reader of a value that is not a number (a state, a cgroup...) that may also be drawn
    from a ``choice`` table."""
    def read(value: object) -> Any:
        if isinstance(value, dict):
            kind = _kind_of(value)
            if kind != "choice":
                raise Bad(f"only a choice can be drawn for this key (distribution = "
                          f"\"choice\", values = [...]), not {show(kind)}")
            return _distribution(value, convert, 0, 0, convert)
        return convert(value)
    return read


def _kind_of(table: dict[str, Any]) -> str:
    kind = table.get("distribution")
    if kind is None:
        raise Bad("a drawn value's table needs distribution = \"uniform\", \"normal\", "
                  "\"lognormal\" or \"choice\"")
    if not isinstance(kind, str) or kind not in DISTRIBUTIONS:
        raise Bad(f"unknown distribution {show(kind)}; "
                  f"{suggest(str(kind), list(DISTRIBUTIONS))}")
    return kind


def _distribution(table: dict[str, Any], convert: Callable[[object], Any], low: int,
                  high: int, spread: Callable[[object], Any]) -> Draw:
    kind = _kind_of(table)
    keys = DISTRIBUTIONS[kind]
    for key in table:
        if key not in keys:
            raise Bad(f"a {kind} distribution takes {', '.join(keys[1:])}; not {show(key)}")
    if kind == "choice":
        return _choice(table, convert)
    lower = convert(table["min"]) if "min" in table else low
    upper = convert(table["max"]) if "max" in table else high
    if lower > upper:
        raise Bad(f"the {kind} distribution's min is above its max")
    if kind == "uniform":
        if "min" not in table or "max" not in table:
            raise Bad("a uniform distribution needs min and max")
        return Uniform(lower, upper)
    if kind == "normal":
        for key in ("mean", "stddev"):
            if key not in table:
                raise Bad(f"a normal distribution needs mean and stddev (no {key})")
        return Normal(float(convert(table["mean"])), float(spread(table["stddev"])),
                      lower, upper)
    for key in ("median", "sigma"):
        if key not in table:
            raise Bad(f"a lognormal distribution needs median and sigma (no {key})")
    median = convert(table["median"])
    if median <= 0:
        raise Bad("a lognormal distribution's median must be above 0")
    return LogNormal(float(median), _positive("sigma", table["sigma"]), lower, upper)


def _choice(table: dict[str, Any], convert: Callable[[object], Any]) -> Choice:
    values = table.get("values")
    if not isinstance(values, list) or not values:
        raise Bad("a choice needs values = [...], a non-empty array")
    picked = tuple(convert(v) for v in values)
    if "weights" not in table:
        return Choice(picked)
    weights = table["weights"]
    if not isinstance(weights, list) or len(weights) != len(values):
        raise Bad(f"a choice's weights are an array as long as its values ({len(values)})")
    running = 0.0
    cumulative = []
    for weight in weights:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (
                math.isfinite(weight) and weight >= 0):
            raise Bad(f"a weight is a number of at least 0, not {show(weight)}")
        running += weight
        cumulative.append(running)
    if running <= 0:
        raise Bad("a choice's weights must not all be 0")
    return Choice(picked, tuple(cumulative))


def _positive(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Bad(f"{key} is a number, not {type_name(value)} {show(value)}")
    if not (math.isfinite(value) and value > 0):
        raise Bad(f"{key} must be a number above 0, not {show(value)}")
    return float(value)


def lowest(value: Any) -> Any:
    """The least value a constant or a draw can give."""
    if isinstance(value, Choice):
        return min(value.values)
    if isinstance(value, (Uniform, Normal, LogNormal)):
        return value.low
    return value


def highest(value: Any) -> Any:
    """The greatest value a constant or a draw can give (for checks made once for a whole
    population, such as a start time that must not be after the scenario's start)."""
    if isinstance(value, Choice):
        return max(value.values)
    if isinstance(value, (Uniform, Normal, LogNormal)):
        return value.high
    return value
