"""Recording a real machine's taskstats, for replay: `tsemu record` and `tsemu diff`.

What lives here, module by module:

- `host`: talking to the running kernel (root, CONFIG_TASKSTATS): the snapshot of the live
  tasks (a GET per task and what /proc says of it), exit listeners on the chosen CPUs, GETs
  sampled at an interval; the result is a `Recording`;
- `document`: a `Recording` as a scenario document (JSON), on the recorded kernel's profile:
  processes with every counter taskstats gave, `set` events for the samples, and a
  `recorded_exit` event carrying each exit's bytes;
- `anonymize`: names, command lines and user ids rewritten consistently, in the document
  and inside the recorded bytes alike;
- `diff`: where two recordings or two captures first differ, and how.

What must not: the scenario format's rules (`tsemu.emulator.scenario` reads what is written
here, as it reads any file) and the emulator's shell (a recording is replayed by `tsemu
serve` like any scenario). This package may import the model, the scenario package, the
shell's capture, and the wire codec.
"""
