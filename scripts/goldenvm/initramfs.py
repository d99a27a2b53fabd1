"""The guest's initramfs: busybox, the 9p modules and an /init that runs one capture.

The guest needs no root filesystem of its own: /init loads virtio-9p, mounts the host's root
read-only at /host and a writable share at /host/tmp/golden-out (over a tmpfs, since /host is
read-only), gives /host the guest's own /proc, /sys, /dev and cgroup mounts (laid out as on the
host where the golden file was first captured: v1 `cpu` and a v2 `unified` under a tmpfs
/sys/fs/cgroup), then chroots into it and runs the repository's capture script with the
repository's own venv python. What the guest learns goes to the writable share: the capture,
the exit status, `uname -a`. Then it powers off; QEMU runs with -no-reboot, so a panic ends it
too.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from .cpio import CpioWriter
from .kernelpkg import load_order, module_bytes

#: 9p mount tags, shared with the QEMU command line.
ROOT_TAG = "hostroot"
OUT_TAG = "goldenout"
#: Where the writable share appears inside the chroot.
GUEST_OUT = "/tmp/golden-out"

_INIT = r"""#!/bin/busybox sh
# tsemu golden capture: mount the host over 9p, run the capture as root, power off.
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /host
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec >/dev/console 2>&1
say() { echo "golden-init: $*"; }
die() { say "FAILED: $*"; poweroff -f; sleep 5; echo o > /proc/sysrq-trigger; }
for m in /modules/*.ko; do
    [ -e "$m" ] || continue
    insmod "$m" || die "insmod $m"
done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 {root_tag} /host \
    || die "mount the host root over 9p"
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
mount -t devtmpfs devtmpfs /host/dev
mount -t tmpfs tmpfs /host/tmp
mkdir -p /host{guest_out}
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 {out_tag} /host{guest_out} \
    || die "mount the output share"
mount -t tmpfs -o mode=755 cgroup /host/sys/fs/cgroup
mkdir /host/sys/fs/cgroup/cpu /host/sys/fs/cgroup/unified
mount -t cgroup -o cpu cgroup /host/sys/fs/cgroup/cpu || rmdir /host/sys/fs/cgroup/cpu
mount -t cgroup2 cgroup2 /host/sys/fs/cgroup/unified || rmdir /host/sys/fs/cgroup/unified
uname -a > /host{guest_out}/uname
cat /proc/sys/kernel/task_delayacct > /host{guest_out}/task_delayacct 2>/dev/null
say "running the capture on $(uname -r)"
chroot /host /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    /bin/sh -c {command}
echo $? > /host{guest_out}/status
sync
say "done, status $(cat /host{guest_out}/status)"
umount /host{guest_out}
poweroff -f
sleep 5
echo o > /proc/sysrq-trigger
"""


@dataclass(frozen=True)
class CaptureCommand:
    """What the guest runs: the repository, its python, the capture script, the output name."""

    repo: Path
    python: Path
    script: Path
    output_name: str = "capture.json"

    def shell(self) -> str:
        out = f"{GUEST_OUT}/{self.output_name}"
        return (f"cd {shlex.quote(str(self.repo))} && exec {shlex.quote(str(self.python))} "
                f"{shlex.quote(str(self.script))} {shlex.quote(out)}")


def init_script(command: CaptureCommand) -> str:
    return (_INIT.replace("{root_tag}", ROOT_TAG).replace("{out_tag}", OUT_TAG)
            .replace("{guest_out}", GUEST_OUT)
            .replace("{command}", shlex.quote(command.shell())))


def build(modules_dir: Path, busybox: Path, command: CaptureCommand) -> bytes:
    """The initramfs archive: /init, /bin/busybox, /dev/console and /modules/NN-name.ko in
    load order (the glob in /init loads them in that order)."""
    archive = CpioWriter()
    for d in ("bin", "dev", "proc", "sys", "host", "modules"):
        archive.directory(d)
    archive.char_device("dev/console", 5, 1)
    archive.file("bin/busybox", busybox.read_bytes(), 0o755)
    archive.file("init", init_script(command).encode(), 0o755)
    for i, rel in enumerate(load_order(modules_dir)):
        name = rel.rsplit("/", 1)[-1].split(".ko", 1)[0]
        archive.file(f"modules/{i:02d}-{name}.ko", module_bytes(modules_dir, rel))
    return archive.finish()
