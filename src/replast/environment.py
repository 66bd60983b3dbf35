"""What a run ran on: package versions, replast's source commit and the device, recorded in final.json.

A study's report groups its runs by this record, so a results table says which software and hardware
produced it without anyone having to remember.
"""

from __future__ import annotations

import platform
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

import replast

PACKAGES = ("torch", "torchvision", "timm", "lightning")


def describe(device: torch.device) -> dict[str, Any]:
    """Versions, commit and device name of this process (JSON-able; None where something is unknown)."""
    return {
        "replast": replast.__version__,
        "commit": source_commit(),
        "python": platform.python_version(),
        **{name: _version(name) for name in PACKAGES},
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_model() if device.type == "cpu" else device.type


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@cache
def source_commit() -> str | None:
    """The git commit of replast's source, "-dirty" when its tracked files differ from it; None where the
    source is not tracked by git (an installed wheel, even inside someone else's repository)."""
    source = Path(replast.__file__).resolve().parent
    try:
        if _git(source, "ls-files", "--error-unmatch", "__init__.py").returncode != 0:
            return None
        commit = _git(source, "rev-parse", "--short=7", "HEAD").stdout.strip()
        dirty = _git(source, "diff", "--quiet", "HEAD", "--", ".").returncode == 1
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit or None


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)


@cache
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"
