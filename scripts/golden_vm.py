#!/usr/bin/env python3
"""Capture a real Debian kernel's taskstats replies under QEMU (`make golden KERNEL=6.1`).

    golden_vm.py --kernel 6.1|6.12|sid [--golden-dir tests/golden] [--cache build/golden-vm]

1. apt, on a private sources list and state (goldenvm.apt), fetches the suite's current
   kernel image package, and where Debian splits it the linux-binary and linux-modules ones;
2. they are unpacked into the cache; the initramfs gets busybox (busybox-static), the virtio
   and 9p modules in dependency order, and an /init that runs scripts/capture_golden.py from
   this repository, with its venv's python, as root inside the guest;
3. qemu-system-x86_64 boots it (TCG unless a real KVM module is loaded) with the host's root
   shared read-only and a fresh writable directory for the result;
4. the result is checked and written to GOLDEN_DIR/kernel-MAJOR.MINOR.json, with the package,
   the guest's `uname -a` and how it was booted recorded beside the cases.

Needs root (apt, and a capture that needs CAP_NET_ADMIN runs as the guest's root anyway),
qemu-system-x86 and busybox-static. The console of the last boot is kept in the cache
directory (console-RELEASE.log) for when something goes wrong.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from goldenvm import capture, initramfs, qemu
from goldenvm.apt import PrivateApt
from goldenvm.kernelpkg import UnpackedKernel, unpack
from goldenvm.suites import SUITES, suite_for, system_mirrors

REPO = Path(__file__).resolve().parent.parent
BUSYBOX_CANDIDATES = (Path("/bin/busybox"), Path("/usr/bin/busybox"))


def _is_static_elf(path: Path) -> bool:
    """An ELF executable with no PT_INTERP program header: runs without a dynamic loader,
    which is what an initramfs holding nothing else needs."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    phoff = int.from_bytes(data[0x20:0x28], "little")
    phentsize = int.from_bytes(data[0x36:0x38], "little")
    phnum = int.from_bytes(data[0x38:0x3A], "little")
    return all(int.from_bytes(data[phoff + i * phentsize:phoff + i * phentsize + 4], "little")
               != 3 for i in range(phnum))


def find_busybox() -> Path:
    for path in BUSYBOX_CANDIDATES:
        if path.is_file() and _is_static_elf(path):
            return path
    raise FileNotFoundError("no statically linked busybox: install busybox-static")


#: Exit status when the kernel package cannot be had (no apt, no mirror, no such package):
#: the optional `vm` test skips on it rather than failing.
UNAVAILABLE = 3


class Unavailable(RuntimeError):
    """The kernel package could not be fetched: a fact about this machine, not a bug."""


def fetch_kernel(kernel: str, cache: Path) -> tuple[UnpackedKernel, list[str]]:
    """The suite's kernel, downloaded (private apt) and unpacked; and the .debs' names."""
    suite = suite_for(kernel)
    apt = PrivateApt(cache / "apt" / suite, suite)
    try:
        apt.prepare(system_mirrors())
        apt.update()
        image = apt.image_package()
        debs = [apt.download(p) for p in apt.parts_of(image)]
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        raise Unavailable(f"cannot fetch the {suite} kernel: {exc}") from None
    return unpack(debs, cache / "kernels" / image), [d.name for d in debs]


def capture_kernel(kernel: str, golden_dir: Path, cache: Path, timeout: float) -> Path:
    """Boot `kernel`'s current Debian build, capture, store; the stored file's path."""
    cache.mkdir(parents=True, exist_ok=True)
    unpacked, debs = fetch_kernel(kernel, cache)
    print(f"golden_vm: {unpacked.release} from {', '.join(debs)}", file=sys.stderr)
    python = REPO / ".venv" / "bin" / "python"
    if not python.exists():
        raise FileNotFoundError(f"{python} is missing: run `make install` first")
    command = initramfs.CaptureCommand(REPO, python, REPO / "scripts" / "capture_golden.py")
    initrd = cache / f"initrd-{unpacked.release}.cpio"
    initrd.write_bytes(initramfs.build(unpacked.modules_dir, find_busybox(), command))
    share = Path(tempfile.mkdtemp(prefix="share-", dir=cache))
    try:
        console = cache / f"console-{unpacked.release}.log"
        boot = qemu.Boot(unpacked.vmlinuz, initrd, share)
        result = qemu.run(boot, console, timeout)
        print(f"golden_vm: the guest ran {result.seconds:.1f} s "
              f"(qemu exit {result.returncode})", file=sys.stderr)
        try:
            status = capture.read_share_file(share, "status", 64).decode().strip()
            doc = json.loads(capture.read_share_file(share, command.output_name))
        except (OSError, ValueError) as exc:
            tail = console.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the guest left no capture ({exc}); console {console}:\n"
                               f"{tail}") from None
        if status != "0":
            raise RuntimeError(f"the capture exited with status {status}; console {console}")
        doc = capture.validate(doc, unpacked.release)
        uname = capture.read_share_file(share, "uname", 4096).decode(errors="replace").strip()
        extra = {
            "uname": uname,
            "debian_packages": debs,
            "booted": f"qemu-system-x86_64 -accel {result.accel} "
                      f"-smp {boot.cpus} -m {boot.memory_mb}M, cmdline {qemu.CMDLINE!r}",
            "boot_seconds": round(result.seconds, 1),
        }
        return capture.store(doc, golden_dir, extra)
    finally:
        shutil.rmtree(share, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernel", required=True, help=f"one of {', '.join(SUITES)}")
    parser.add_argument("--golden-dir", type=Path, default=REPO / "tests" / "golden")
    parser.add_argument("--cache", type=Path, default=REPO / "build" / "golden-vm")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds the guest may run (TCG on 2 shared CPUs is slow)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        path = capture_kernel(args.kernel, args.golden_dir.resolve(), args.cache.resolve(),
                              args.timeout)
    except Unavailable as exc:
        print(f"golden_vm: {exc}", file=sys.stderr)
        return UNAVAILABLE
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        print(f"golden_vm: {exc}", file=sys.stderr)
        return 1
    print(f"golden_vm: wrote {path} in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
