"""`make install` on a disk too small for PyTorch stops before pip starts, with one line saying so."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_install_refuses_a_disk_without_room_for_torch(tmp_path):
    venv = tmp_path / "venv"
    stamp = venv / ".replast-installed"
    result = subprocess.run(["make", "-s", str(stamp), f"VENV={venv}", "NEED_GB=1000000"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "needs about 1000000 GB free" in errors[0] and "VENV=" in errors[0]
    assert not stamp.exists() and not list(venv.glob("lib/python*/site-packages/torch"))
