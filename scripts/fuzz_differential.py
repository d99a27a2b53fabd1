#!/usr/bin/env python3
"""Differential fuzz of netlink datagrams: the host kernel against an in-process tsemu.

Run as root on a kernel with CONFIG_TASKSTATS (`make fuzz`). Prints the mismatch rate, how
often each documented difference (tests/known_differences.py) applied, and each class of
undocumented mismatch with one reproducible example (seed, case index, datagram in hex).
Exits 1 when there is an undocumented mismatch, 2 when the host cannot be fuzzed.

    scripts/fuzz_differential.py --seeds 10 --cases 3000
    scripts/fuzz_differential.py --seed 7 --seed 12 --cases 500
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fuzzing import fuzz  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10, help="run seeds 1..N (default 10)")
    parser.add_argument("--seed", action="append", default=[],
                        help="run this seed (repeatable; overrides --seeds)")
    parser.add_argument("--cases", type=int, default=3000, help="cases per seed (3000)")
    parser.add_argument("--no-examples", action="store_true",
                        help="do not print an example datagram per mismatch class")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("fuzz: needs root (TASKSTATS_CMD_GET requires CAP_NET_ADMIN)", file=sys.stderr)
        return 2
    seeds = args.seed or list(range(1, args.seeds + 1))
    try:
        report = trio.run(lambda: fuzz(seeds, args.cases,
                                       progress=lambda s: print(s, file=sys.stderr)))
    except OSError as exc:
        print(f"fuzz: the host kernel cannot be reached ({exc})", file=sys.stderr)
        return 2
    print(report.text(examples=not args.no_examples))
    return 1 if report.undocumented_cases else 0


if __name__ == "__main__":
    sys.exit(main())
