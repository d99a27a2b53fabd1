"""The capture machinery itself: boot Debian's 6.1 under QEMU and capture it (marked `vm`).

Slow (about a minute of software emulation, more on a busy machine, plus a download of about
70 MB the first time), so it runs only when asked for: `make test-vm` (pytest -m vm). It skips,
with the reason, where it cannot run: not root, no qemu-system-x86_64, no static busybox, no
venv, or the kernel package cannot be fetched (scripts/golden_vm.py exits with UNAVAILABLE).

A fresh capture must be a well-formed capture of the kernel that was booted; where the stored
tests/golden/kernel-6.1.json came from the same build, every answer that does not depend on
what ran in the guest must be the stored one, byte for byte (the port id aside): the machinery
is then shown to reproduce its own golden file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .golden_kernels import GOLDEN_DIR, cases_by_name, replies
from .test_server_golden import REPLAYABLE, with_port

REPO = Path(__file__).resolve().parent.parent
KERNEL = "6.1"
#: golden_vm.py's exit status when the kernel package cannot be fetched.
UNAVAILABLE = 3
TIMEOUT = 1200


def _selected(config: pytest.Config) -> bool:
    expr = str(config.getoption("markexpr") or "")
    return "vm" in expr and "not vm" not in expr


def _static_busybox() -> bool:
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.isfile(path):
            done = subprocess.run(["ldd", path], capture_output=True, check=False)
            if done.returncode != 0:  # "not a dynamic executable"
                return True
    return False


@pytest.fixture
def vm_ready(request: pytest.FixtureRequest) -> None:
    if not _selected(request.config):
        pytest.skip("boots a kernel under QEMU (a minute or more): run `make test-vm` "
                    "(pytest -m vm)")
    if os.geteuid() != 0:
        pytest.skip("vm: needs root (apt downloads, and the guest's capture runs as root)")
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("vm: qemu-system-x86_64 is not installed (Debian: qemu-system-x86)")
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("vm: no apt-get/dpkg-deb to fetch Debian's kernel")
    if not _static_busybox():
        pytest.skip("vm: no statically linked busybox (Debian: busybox-static)")
    if not (REPO / ".venv" / "bin" / "python").exists():
        pytest.skip("vm: the repository's .venv is missing (the guest runs its python)")


def _normalised(case: dict[str, Any]) -> list[bytes]:
    """The case's replies with what differs between two captures of one build set aside: the
    port id, and the echoed request (which carries the capturing process's pid)."""
    request = bytes.fromhex(case["request"])
    out = []
    for datagram in replies(case):
        datagram = with_port(datagram, 0)
        if request:
            datagram = datagram.replace(request, b"<request>").replace(request[:16],
                                                                      b"<header>")
        out.append(datagram)
    return out


@pytest.mark.vm
def test_boot_and_capture_debian_6_1(vm_ready: None, tmp_path: Path) -> None:
    out = tmp_path / "golden"
    out.mkdir()
    try:
        done = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "golden_vm.py"), "--kernel", KERNEL,
             "--golden-dir", str(out), "--cache", str(REPO / "build" / "golden-vm")],
            capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"boot and capture took over {TIMEOUT} s")
    if done.returncode == UNAVAILABLE:
        pytest.skip(f"vm: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr[-3000:]
    fresh: dict[str, Any] = json.loads((out / f"kernel-{KERNEL}.json").read_text())
    assert fresh["kernel"].startswith(KERNEL + ".")
    assert fresh["task_delayacct"] == 1, "the guest booted without delayacct"
    assert "tcg" in fresh["booted"] or "kvm" in fresh["booted"]
    names = {c["name"] for c in fresh["cases"]}
    assert {"get_pid_self", "exit_1_thread", "exit_2_thread", "exit_group_2_thread_1",
            "get_tgid_after_thread_exit", "get_unprivileged"} <= names
    stored_path = GOLDEN_DIR / f"kernel-{KERNEL}.json"
    stored = json.loads(stored_path.read_text()) if stored_path.exists() else None
    if stored is None or stored["kernel_version"] != fresh["kernel_version"]:
        pytest.skip(f"vm: captured {fresh['kernel_version']}; the stored capture is of "
                    "another build, so its bytes cannot be compared")
    old, new = cases_by_name(stored), cases_by_name(fresh)
    for name in REPLAYABLE:
        assert _normalised(new[name]) == _normalised(old[name]), name
