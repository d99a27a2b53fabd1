"""tsemu.emulator: the kernel model (process table, accounting rules, families, listeners) and
the trio server that moves datagrams in and out."""
