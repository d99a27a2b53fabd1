"""tsemu: the Linux kernel's taskstats interface, emulated in user space.

Subpackages: `tsemu.wire` (the codec, no I/O), `tsemu.emulator` (the kernel model and its trio
server), `tsemu.cli` (the command line). Their sources live in the repository's top-level
`wire/`, `emulator/` and `cli/` directories (see pyproject.toml).
"""

__version__ = "0.1.0"
