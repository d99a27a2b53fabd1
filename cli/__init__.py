"""tsemu.cli: the typer command line; thin, it parses options and calls the emulator."""
