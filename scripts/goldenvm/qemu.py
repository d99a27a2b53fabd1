"""Booting a kernel under qemu-system-x86_64, with the host's root shared over virtio-9p.

Software emulation (TCG) unless a real KVM module is loaded: /dev/kvm on these machines can be
a PVM device under which stock Debian kernels hang at boot, so its mere presence proves
nothing; `kvm_intel` or `kvm_amd` in /proc/modules does. The kernel command line turns on
delay accounting (`delayacct`: Debian builds with it off by default, and a capture without it
would show zero delays where a tuned machine shows counts), sends the console to the serial
port, and makes a panic end the VM at once instead of hanging until the timeout.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .initramfs import OUT_TAG, ROOT_TAG

QEMU = "qemu-system-x86_64"
CMDLINE = "console=ttyS0 delayacct panic=-1 loglevel=4 rdinit=/init"


def kvm_usable(modules: Path = Path("/proc/modules")) -> bool:
    """Whether hardware virtualisation is really there (kvm_intel/kvm_amd loaded)."""
    try:
        names = {line.split()[0] for line in modules.read_text().splitlines() if line}
    except OSError:
        return False
    return bool({"kvm_intel", "kvm_amd"} & names) and os.access("/dev/kvm", os.R_OK | os.W_OK)


@dataclass(frozen=True)
class Boot:
    """One boot: the kernel, the initramfs, the writable share, and the machine's size."""

    vmlinuz: Path
    initrd: Path
    out_dir: Path
    root: Path = Path("/")
    memory_mb: int = 1024
    cpus: int = 2

    def command(self, accel: str) -> list[str]:
        return [
            QEMU, "-accel", accel, "-m", str(self.memory_mb), "-smp", str(self.cpus),
            "-nographic", "-monitor", "none", "-no-reboot", "-nic", "none",
            "-kernel", str(self.vmlinuz), "-initrd", str(self.initrd),
            "-append", CMDLINE,
            "-fsdev", f"local,id=hostroot,path={self.root},security_model=none,readonly=on,"
                      "multidevs=remap",
            "-device", f"virtio-9p-pci,fsdev=hostroot,mount_tag={ROOT_TAG}",
            "-fsdev", f"local,id=goldenout,path={self.out_dir},security_model=none",
            "-device", f"virtio-9p-pci,fsdev=goldenout,mount_tag={OUT_TAG}",
        ]


@dataclass(frozen=True)
class BootResult:
    returncode: int | None  # None: killed at the timeout
    seconds: float
    console: Path
    accel: str


def run(boot: Boot, console: Path, timeout: float) -> BootResult:
    """Boot and wait for the guest to power off (or the timeout); the console goes to a file."""
    if shutil.which(QEMU) is None:
        raise FileNotFoundError(f"{QEMU} is not installed (Debian: qemu-system-x86)")
    accel = "kvm" if kvm_usable() else "tcg"
    start = time.monotonic()
    with open(console, "wb") as log:
        proc = subprocess.Popen(boot.command(accel), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    return BootResult(code, time.monotonic() - start, console, accel)
