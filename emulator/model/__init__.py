"""The kernel model: what the emulated kernel knows and decides, as plain objects.

What lives here: the process table (tasks, thread groups, pid allocation, exits), the
accounting rules that turn counters into struct taskstats values, the generic-netlink
families, the kernel profiles (what differs between kernel generations), the dispatch of a
datagram to its answer (`kernel`), and the clocks it reads time from.

What must not: trio, sockets, files, or the host's state. Everything here is a pure function
of its inputs and the objects it is given, so it can be tested without a server and reasoned
about as the kernel's rules alone. `tsemu.emulator.shell` carries out what it decides;
`tsemu.emulator.scenario` builds its tables from files. Nothing here imports either.
"""
