"""The scenario verbs: `tsemu scenario check`, `convert` and `reference`.

Each reads scenario files with `tsemu.emulator.scenario` and says what it found; nothing here
knows the format. `register(app)` adds the `scenario` group to the typer app (cli/app.py calls
it). Errors follow cli/app.py's conventions: one stderr line "tsemu: ..." (a scenario's
problems one line each), status 1 when the operation fails, 2 for bad usage.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from tsemu.cli.common import fail

scenario_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                           pretty_exceptions_enable=False,
                           help="Check, convert and document scenario files (TOML or JSON).")


def register(app: typer.Typer) -> None:
    app.add_typer(scenario_app, name="scenario")


@scenario_app.command(
    "check", epilog="Examples:\n\n  tsemu scenario check examples/*.toml\n\n"
                    "  tsemu scenario check recording.json")
def check(files: Annotated[list[Path], typer.Argument(
        help="Scenario files: *.json is JSON, anything else TOML.", show_default=False)],
          ) -> None:
    """Read and check scenario files as `tsemu serve` would, without serving: prints one
    line per file (its machine, tasks and timeline) or its problems, one per line. Exits 1 if
    any file has a problem."""
    from tsemu.emulator.scenario import ScenarioError, load_scenario

    failed = False
    for path in files:
        try:
            scenario = load_scenario(path)
        except ScenarioError as exc:
            failed = True
            for problem in exc.problems:
                typer.echo(problem, err=True)
            continue
        machine = scenario.machine
        typer.echo(f"{path}: ok: kernel {machine.kernel}, {machine.cpus} CPUs, "
                   f"{len(scenario.processes)} processes ({scenario.task_count} tasks) at the "
                   f"start, {len(scenario.timeline)} timeline events, {machine.clock} clock")
    if failed:
        raise typer.Exit(1)


@scenario_app.command(
    "convert", epilog="Examples:\n\n  tsemu scenario convert machine.toml machine.json\n\n"
                      "  tsemu scenario convert recording.json - --to toml | less")
def convert(
    source: Annotated[Path, typer.Argument(help="The scenario to convert.",
                                           show_default=False)],
    target: Annotated[str, typer.Argument(
        help="Where to write it (its suffix picks the language), or - for stdout.",
        show_default=False)],
    to: Annotated[str | None, typer.Option(
        "--to", help="The language to write: toml or json (default: the target's suffix; "
                     "the other language than the source's for -).", show_default=False)] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace the target if it exists.")] = False,
) -> None:
    """Check a scenario, then write the same scenario in the other language: TOML for people,
    JSON for machines. The result reads back as the same scenario."""
    from tsemu.emulator.scenario import ScenarioError, load_scenario, syntax_of
    from tsemu.emulator.scenario.files import parse_document
    from tsemu.emulator.scenario.writer import dump_document

    source_syntax = syntax_of(source)
    if to is not None and to not in ("toml", "json"):
        fail(f"--to takes toml or json, not {to!r}", 2)
    syntax = to or (("json" if source_syntax == "toml" else "toml") if target == "-"
                    else syntax_of(target))
    try:
        scenario = load_scenario(source)
    except ScenarioError as exc:
        for problem in exc.problems:
            typer.echo(problem, err=True)
        fail(f"{source} was not converted: it has problems")
    assert scenario.text is not None
    text = dump_document(parse_document(scenario.text, str(source), source_syntax), syntax)
    if target == "-":
        sys.stdout.write(text)
        return
    path = Path(target)
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o644)
    except FileExistsError:
        fail(f"{path} exists: give --force to replace it")
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}")
    with os.fdopen(fd, "w", encoding="utf-8", errors="surrogatepass") as out:
        out.write(text)
    typer.echo(f"tsemu: wrote {path} ({syntax.upper()}, {len(scenario.processes)} processes)",
               err=True)


@scenario_app.command("reference")
def reference() -> None:
    """Print the scenario format's reference (every key, value and rule)."""
    from importlib import resources

    sys.stdout.write(resources.files("tsemu.emulator.scenario").joinpath("FORMAT.md")
                     .read_text(encoding="utf-8"))
