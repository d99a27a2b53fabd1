"""`tsemu record` and `tsemu diff`: a real machine's taskstats kept as a scenario, and two
recordings or captures compared. Thin: `tsemu.emulator.record` does the work."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from tsemu.cli.common import fail


def register(app: typer.Typer) -> None:
    app.command(epilog="Examples:\n\n  sudo tsemu record --out host.json --duration 30\n\n"
                       "  sudo tsemu record --out job.json --pids 4242 --anonymize "
                       "--pcap job.pcap\n\n  tsemu serve --scenario host.json")(record)
    app.command(epilog="Examples:\n\n  tsemu diff before.json after.json\n\n"
                       "  tsemu diff recorded.pcap replayed.pcap --ignore seq --ignore port"
                )(diff)


def parse_ids(text: str) -> set[int]:
    """"1,5,300-310" as a set of ids; ValueError for anything else."""
    ids: set[int] = set()
    for item in text.split(","):
        low, dash, high = item.strip().partition("-")
        first = int(low)
        last = int(high) if dash else first
        if first < 1 or last < first or last - first > 4_194_304:
            raise ValueError(f"bad id range {item.strip()!r}")
        ids.update(range(first, last + 1))
    return ids


def _open_out(path: Path, force: bool) -> int:
    from tsemu.emulator.shell.capture import open_new

    try:
        return open_new(path, force=force)
    except FileExistsError:
        fail(f"{path} exists: give --force to replace it")
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}")


def record(
    out: Annotated[Path, typer.Option("--out", "-o", help="The scenario to write (JSON).",
                                      show_default=False)],
    duration: Annotated[float, typer.Option(
        min=0, help="Seconds to listen for exits and sample counters after the snapshot.")
    ] = 10.0,
    cpus: Annotated[str | None, typer.Option(
        help="The CPUs whose exits are recorded, a cpulist (0-3,6). Default: every online "
             "CPU.", show_default=False)] = None,
    pids: Annotated[str | None, typer.Option(
        help="Only these processes (pids, ranges: 812,900-910): their snapshot and their "
             "threads' exits. Default: every process.", show_default=False)] = None,
    interval: Annotated[float, typer.Option(
        min=0.01, help="Seconds between two samples of every task's counters.")] = 1.0,
    anonymize: Annotated[bool, typer.Option(
        "--anonymize", help="Rewrite comms, command lines and uids/gids (0 aside) "
                            "consistently, in the records' bytes too.")] = False,
    pcap: Annotated[Path | None, typer.Option(
        help="Also capture the recorder's own netlink traffic (requests, replies, events) "
             "as pcap (LINKTYPE_NETLINK).", show_default=False)] = None,
    clock: Annotated[str, typer.Option(
        help="The replay's clock: real (the exits replay at their recorded times by "
             "themselves) or virtual (they replay on `tsemu ctl advance`).")] = "real",
    force: Annotated[bool, typer.Option(
        "--force", help="Replace --out (and --pcap) if they exist.")] = False,
) -> None:
    """Record the running kernel's taskstats (root, a kernel with CONFIG_TASKSTATS): a
    snapshot of every live task, then for --duration seconds every exit event heard on the
    chosen CPUs and every task's counters each --interval. Writes a scenario that `tsemu
    serve --scenario FILE` replays: its listeners get the recorded exit events, byte for
    byte but for seq and port id."""
    import trio

    from tsemu.emulator.record.anonymize import Anonymizer
    from tsemu.emulator.record.document import dump, to_document
    from tsemu.emulator.record.host import RecordError
    from tsemu.emulator.record.host import record as record_host
    from tsemu.emulator.shell.capture import Capture
    from tsemu.wire import WireError
    from tsemu.wire.cpulist import parse_cpulist

    if clock not in ("real", "virtual"):
        fail(f"--clock takes real or virtual, not {clock!r}", 2)
    try:
        cpu_list = sorted(parse_cpulist(cpus.encode(), 8192)) if cpus is not None else None
        pid_set = parse_ids(pids) if pids is not None else None
    except (ValueError, WireError) as exc:
        fail(f"bad --cpus or --pids: {exc}", 2)
    if os.geteuid() != 0:
        fail("tsemu record reads the kernel's taskstats, which needs root (CAP_NET_ADMIN)")
    if not hasattr(os, "O_NOFOLLOW") or not os.path.isdir("/proc"):
        fail("tsemu record runs on Linux only")
    fd = _open_out(out, force)
    anonymizer = Anonymizer() if anonymize else None
    capture = None
    try:
        if pcap is not None:
            try:
                capture = Capture(pcap, force=force)
            except FileExistsError:
                fail(f"{pcap} exists: give --force to replace it")
            except OSError as exc:
                fail(f"cannot write {pcap}: {exc.strerror or exc}")

        def tap(data: bytes, sent: bool) -> None:
            assert capture is not None
            if anonymizer is not None:
                data = anonymizer.message(data)
            (capture.inbound if sent else capture.outbound)(data)

        def started() -> None:
            typer.echo(f"tsemu: snapshot taken; listening for {duration:g} s", err=True)

        try:
            recording = trio.run(lambda: record_host(
                duration=duration, cpus=cpu_list, pids=pid_set, interval=interval,
                tap=tap if capture is not None else None, started=started))
        except RecordError as exc:
            fail(str(exc))
        except PermissionError:
            fail("taskstats needs CAP_NET_ADMIN: run tsemu record as root")
        text = dump(to_document(recording, clock=clock, anonymizer=anonymizer))
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            fd = -1
            handle.write(text)
    except BaseException:
        if fd >= 0:
            os.close(fd)
            os.unlink(out)
        raise
    finally:
        if capture is not None:
            capture.close()
    tasks = sum(len(p.tasks) for p in recording.processes)
    typer.echo(f"tsemu: wrote {out}: {len(recording.processes)} processes ({tasks} tasks), "
               f"{len(recording.exits)} exits on CPUs {','.join(map(str, recording.listened))}"
               f", {len(recording.samples)} samples"
               + (f"; {recording.lost} receives lost events (ENOBUFS)" if recording.lost
                  else ""), err=True)


def diff(
    a: Annotated[Path, typer.Argument(help="A recording (scenario) or a pcap capture.",
                                      show_default=False)],
    b: Annotated[Path, typer.Argument(help="The other, of the same kind.",
                                      show_default=False)],
    ignore: Annotated[list[str] | None, typer.Option(
        help="Leave out of the comparison: seq (nlmsg_seq), port (nlmsg_pid), time (a "
             "recording's timeline times). Repeatable.", show_default=False)] = None,
) -> None:
    """Compare two recordings or two captures: says where they first differ and how (exit
    status 1), or that they are the same (0)."""
    from tsemu.emulator.record.diff import IGNORABLE, diff_files

    ignored = set(ignore or ())
    bad = ignored - set(IGNORABLE)
    if bad:
        fail(f"--ignore takes {', '.join(IGNORABLE)}, not {', '.join(sorted(bad))}", 2)
    try:
        found = diff_files(a, b, ignored)
    except OSError as exc:
        fail(f"{exc.filename}: {exc.strerror}")
    except ValueError as exc:
        fail(str(exc), 2)
    if found is None:
        typer.echo(f"{a} and {b} are the same")
        return
    typer.echo(f"{a} and {b} differ: {found}")
    raise typer.Exit(1)
