"""What every verb of the command line shares: the --socket option, the socket rule, and how
a failure is reported (one stderr line "tsemu: ...", exit 1 for a failed operation, 2 for
bad usage)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from tsemu.emulator.shell.addressing import default_socket_path

SocketOption = Annotated[
    Path | None,
    typer.Option("--socket", "-s", help="The emulator's socket. Default: $TSEMU_SOCKET, else "
                 "$XDG_RUNTIME_DIR/tsemu/genl.sock, else /tmp/tsemu-UID/genl.sock.",
                 show_default=False),
]


def fail(message: str, status: int = 1) -> NoReturn:
    typer.echo(f"tsemu: {message}", err=True)
    raise typer.Exit(status)


def socket_path(option: Path | None) -> Path:
    """The --socket given, else the default rule (TSEMU_SOCKET, XDG_RUNTIME_DIR, /tmp)."""
    return option if option is not None else default_socket_path()
