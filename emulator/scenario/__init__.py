"""The scenario format: a machine, its tasks and what happens to them, from a file.

The format's reference is FORMAT.md, beside this file (`tsemu scenario reference` prints it):
every key, value and rule a scenario can hold, in TOML (for people) or JSON (for machines).

What lives here, module by module, in the order a file goes through them:

- `files`: text to document (tomllib or json, by the file's suffix), the whole reading and
  check, the embedded default machine;
- `reader`: a document's machine, cgroups, processes, populations and timeline; `tables`:
  reading one table, and the counter tables; `generators`: [[generator]] kinds; `draws`:
  ranges and distributions; `values`: one converter per kind of value; `schema`: the keys of
  every table, as tables;
- `check`: playing the read scenario on a private table, so every reference is checked;
- `build`: carrying a checked scenario out on a `ProcessTable` (`build_table`, `apply_event`);
- `specs`: the checked scenario's types; `problems`: the error every problem goes into;
- `writer`: a document written out in either language (`tsemu scenario convert`).

What may import this package: the shell (`tsemu.emulator.shell`) and the CLI. It imports the
kernel model (`tsemu.emulator.model`), never the shell: no trio, no sockets.
"""

from .build import apply_event, build_table, play
from .files import default_scenario, load_scenario, parse_scenario, syntax_of
from .problems import ScenarioError
from .schema import ACTIONS, GENERATOR_KINDS
from .specs import Event, Machine, ProcessSpec, Scenario, StormPlan, ThreadSpec
from .tables import parse_counter_value
from .values import (
    format_duration,
    parse_duration,
    parse_size,
    policy_number,
    signal_number,
    task_state,
)

__all__ = [
    "ACTIONS", "Event", "GENERATOR_KINDS", "Machine", "ProcessSpec", "Scenario",
    "ScenarioError", "StormPlan", "ThreadSpec", "apply_event", "build_table", "default_scenario",
    "format_duration", "load_scenario", "parse_counter_value", "parse_duration",
    "parse_scenario", "parse_size", "play", "policy_number", "signal_number", "syntax_of",
    "task_state",
]
