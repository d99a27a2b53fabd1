#!/usr/bin/env python3
"""Soak: a server that serves for a long time returns to where it began.

    python scripts/soak.py [--quick] [--exits N] [--listeners N] [--clients N] [--killed N]

Starts `tsemu serve` (virtual clock, 2 CPUs) and puts it twice through the same round:
short-lived GET clients (the benchmark's C `tsget` through the shim, each a process of its
own), listeners killed with SIGKILL, a GET loop beside a storm of exits to many C listeners
(`tslisten`, receive buffers large enough). The first round brings it to its working size; the
state after it (open descriptors, clients, VmRSS) is the baseline of the second. Checks:

- every listener received every exit, in order (per-CPU sequence numbers without a gap), with
  no ENOBUFS;
- descriptors, clients and RSS end the second round where the first ended (within 10%, a
  few descriptors), and no client is left;
- the server reported no internal error.

Prints one JSON line with the figures, and exits 1 if a check failed. `make soak` runs the full
size (1,000,000 exits to 64 listeners); the test suite runs `--quick`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
C_SOURCES = ROOT / "bench" / "c"
SCENARIO = '[machine]\ncpus = 2\nclock = "virtual"\n[[process]]\npid = 100\ncomm = "app"\n'


def build(programs: list[str], out: Path) -> dict[str, Path]:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("soak: no C compiler (cc, gcc) for the clients")
    built = {}
    for name in programs:
        target = out / name
        subprocess.run([compiler, "-O2", "-I", str(C_SOURCES), "-o", str(target),
                        str(C_SOURCES / f"{name}.c")], check=True)
        built[name] = target
    return built


class Served:
    """`tsemu serve` in a child process."""

    def __init__(self, directory: Path) -> None:
        self.socket = directory / "genl.sock"
        scenario = directory / "soak.toml"
        scenario.write_text(SCENARIO)
        self.log = open(directory / "serve.log", "w+b")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tsemu", "serve", "--socket", str(self.socket),
             "--scenario", str(scenario), "--admin", "all", "--busy-poll", "0"],
            stderr=self.log)
        deadline = time.monotonic() + 30
        while not Path(str(self.socket) + ".ctl").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"soak: the server did not start: {self.errors()}")
            time.sleep(0.05)
        from tsemu.emulator.shell.control import ControlClient

        self.ctl = ControlClient(self.socket, timeout=600)

    def env(self) -> dict[str, str]:
        from tsemu.shim import shim_environment

        return {**os.environ, **shim_environment(self.socket)}

    def state(self) -> dict[str, Any]:
        stats = self.ctl.call("stats")
        with open(f"/proc/{self.proc.pid}/status") as f:
            rss = next(int(row.split()[1]) for row in f if row.startswith("VmRSS:")) / 1024
        return {"fds": len(os.listdir(f"/proc/{self.proc.pid}/fd")),
                "clients": len(stats["clients"]), "rss_mb": round(rss, 1),
                "internal_errors": stats["server"]["internal_errors"]}

    def errors(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def stop(self) -> None:
        self.ctl.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def short_lived(served: Served, tsget: Path, count: int) -> None:
    """`count` clients, one process each: a few GETs, then exit."""
    env = served.env()
    for _ in range(count):
        subprocess.run([str(tsget), "-p", "100", "-t", "0.002", "-w", "1", "-f", "31"],
                       env=env, capture_output=True, check=True, timeout=30)


def killed(served: Served, tslisten: Path, count: int) -> None:
    """`count` listeners that register, then die of SIGKILL (their socket files stay)."""
    env = served.env()
    procs = []
    for _ in range(count):
        proc = subprocess.Popen([str(tslisten), "-m", "0-1", "-T", "60", "-f", "31"], env=env,
                                stdout=subprocess.PIPE)
        assert proc.stdout is not None
        if not proc.stdout.readline().startswith(b"ready"):
            raise SystemExit("soak: a listener did not register")
        procs.append(proc)
    for proc in procs:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def storm(served: Served, tslisten: Path, tsget: Path, listeners: int, exits: int
          ) -> list[dict[str, Any]]:
    """`exits` exits on CPUs 0-1 (in turn) to `listeners` listeners, each registered on one
    of them (a listener checks one CPU's sequence numbers), with a GET loop beside."""
    env = served.env()
    procs = []
    for i in range(listeners):
        proc = subprocess.Popen(
            [str(tslisten), "-m", str(i % 2), "-n", str(exits // 2), "-r", str(64 << 20),
             "-i", "10", "-T", "600", "-f", "31"], env=env, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        if not proc.stdout.readline().startswith(b"ready"):
            raise SystemExit("soak: a listener did not register")
        procs.append(proc)
    getter = subprocess.Popen([str(tsget), "-p", "100", "-t", "600", "-n", "20000000",
                               "-f", "31"], env=env, stdout=subprocess.PIPE)
    served.ctl.call("storm", count=exits, cpus="0-1")
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=900)
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    getter.send_signal(signal.SIGINT)
    getter.kill()
    getter.wait()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run (the test suite's)")
    parser.add_argument("--exits", type=int)
    parser.add_argument("--listeners", type=int)
    parser.add_argument("--clients", type=int)
    parser.add_argument("--killed", type=int)
    args = parser.parse_args()
    exits = args.exits or (20_000 if args.quick else 1_000_000)
    listeners = args.listeners or (8 if args.quick else 64)
    clients = args.clients or (100 if args.quick else 2_000)
    dead = args.killed or (20 if args.quick else 200)
    directory = Path(tempfile.mkdtemp(prefix="tssoak", dir="/tmp"))
    served: Served | None = None
    try:
        programs = build(["tsget", "tslisten"], directory)
        served = Served(directory)
        # Two rounds of the same load: the first brings the server to its working size (the
        # allocator keeps the arenas the peak of a storm needed: that is a high-water mark,
        # not a leak), the second must end where the first did.
        rounds = []
        for _ in range(2):
            started = time.monotonic()
            short_lived(served, programs["tsget"], clients)
            killed(served, programs["tslisten"], dead)
            results = storm(served, programs["tslisten"], programs["tsget"], listeners, exits)
            seconds = time.monotonic() - started
            time.sleep(2.5)  # (a sweep finds what is gone)
            rounds.append(served.state())
        baseline, after = rounds
    finally:
        if served is not None:
            served.stop()
        shutil.rmtree(directory, ignore_errors=True)
    problems = []
    for i, r in enumerate(results):
        if r["received"] != exits // 2 or r["gaps"] or r["missing"] or r["enobufs"]:
            problems.append(f"listener {i}: {r}")
    if baseline["clients"] != 0 or after["clients"] != 0:
        problems.append(f"{after['clients']} clients still known")
    if after["fds"] > baseline["fds"] * 1.1 + 2:
        problems.append(f"descriptors {baseline['fds']} -> {after['fds']}")
    if after["rss_mb"] > baseline["rss_mb"] * 1.1:
        problems.append(f"RSS {baseline['rss_mb']} -> {after['rss_mb']} MB")
    if after["internal_errors"]:
        problems.append(f"{after['internal_errors']} internal errors")
    print(json.dumps({"exits": exits, "listeners": listeners, "short_lived_clients": clients,
                      "killed_listeners": dead, "seconds": round(seconds, 1),
                      "baseline": baseline, "after": after, "problems": problems}))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
