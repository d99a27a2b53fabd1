"""tsemu.emulator: the emulated kernel, in three layers, each a subpackage.

- `model`: the kernel's rules as plain objects (no trio, no I/O): process table, accounting,
  families, profiles, dispatch;
- `shell`: trio and the sockets around the model: server, outboxes, broadcasts, control,
  runner;
- `scenario`: the scenario format and what builds a model's table from it.

`shell` may import `model` and `scenario`; `scenario` may import `model`; `model` imports
neither.
"""
