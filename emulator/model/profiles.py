"""Kernel profiles: the differences between the kernels tsemu can pretend to be.

Everything that differs between kernel generations, as far as a taskstats client can see, is a
column of the table `PROFILES` below; code elsewhere reads the profile and never tests a kernel
version number itself.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KernelProfile:
    """What one kernel generation answers differently.

    - `taskstats_version`: struct taskstats version (and so its size) in every reply and event;
    - `tgid_exit_adds_times`: whether a thread's exit adds its etime, utime, stime, nvcsw and
      nivcsw to the thread group's totals (Linux 6.18 does; kernels up to about 6.12 added only
      the delay-accounting fields, see the seed taskstats.c's `fill_tgid_exit`);
    - `nr_cpus_config`: CONFIG_NR_CPUS, which bounds a cpumask string's length (100 + 6*NR_CPUS);
    - `rmem_default` / `rmem_max`: net.core.rmem_default and rmem_max, the default and the
      largest SO_RCVBUF a listener gets without SO_RCVBUFFORCE.
    """

    name: str
    release: str
    taskstats_version: int
    tgid_exit_adds_times: bool
    nr_cpus_config: int = 256
    rmem_default: int = 212992
    rmem_max: int = 212992


#: The profiles, by the name `--kernel` takes.
PROFILES: dict[str, KernelProfile] = {
    p.name: p
    for p in (
        KernelProfile("6.1", "6.1.0-tsemu", taskstats_version=13, tgid_exit_adds_times=False),
        KernelProfile("6.18", "6.18.0-tsemu", taskstats_version=16, tgid_exit_adds_times=True),
        KernelProfile("7.2", "7.2.0-tsemu", taskstats_version=17, tgid_exit_adds_times=True),
    )
}

DEFAULT_PROFILE = PROFILES["6.18"]


def profile(name: str) -> KernelProfile:
    """The profile called `name`; ValueError naming the choices otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown kernel profile {name!r}; choose one of "
                         f"{', '.join(PROFILES)}") from None
