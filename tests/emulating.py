"""An emulator served in-process for a test, and a Python listener that keeps up with it:
what tests of whole broadcast paths (storms, paced storms) share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from tsemu.client import Client
from tsemu.emulator.scenario import parse_scenario
from tsemu.emulator.shell.runner import Emulator

#: An empty two-CPU machine on the virtual clock.
TWO_CPUS = '[machine]\ncpus = 2\nclock = "virtual"\n'


@asynccontextmanager
async def emulator(tmp: Path, text: str = TWO_CPUS) -> AsyncIterator[Emulator]:
    """The scenario `text` served on `tmp/genl.sock` until the block ends."""
    emu = Emulator(parse_scenario(text), tmp / "genl.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(emu.run)
        yield emu
        nursery.cancel_scope.cancel()


async def listen(emu: Emulator, cpus: str) -> Client:
    """A client registered on `cpus`, with a receive budget no storm fills: a Python reader
    is slow, and these tests are about what is sent, not about overruns."""
    client = await Client.connect(emu.socket_path)
    await client.register(cpus)
    emu.server.clients[client.port].outbox.budget = 1 << 26
    return client
