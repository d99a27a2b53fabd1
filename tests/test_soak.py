"""The soak, small (`make soak` is the long one): clients that come and go, listeners killed,
a storm to several listeners beside a GET loop; everything received, nothing left behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")),
                    reason="no C compiler to build the soak's clients")
def test_a_quick_soak_leaves_nothing_behind() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "soak.py"), "--quick"],
                          capture_output=True, text=True, timeout=300)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0 and report["problems"] == [], report
    assert report["after"]["clients"] == 0
