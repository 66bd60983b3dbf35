"""Shared fixtures: a quiet CPU environment and a helper that runs the real CLI in-process."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# One intra-op thread: on a busy 2-core machine OpenMP spin-waiting makes torch 50x slower, not faster.
os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("REPLAST_TEST_THREADS", "1"))

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def cli(capsys):
    """Run `replast ARGS...` in-process; returns (exit code, stdout, stderr)."""
    from replast.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def tiny_run_args(tmp_path):
    """Options of a seconds-long fine-tune on synthetic data with a small random-init CNN."""
    return ["--model", "mobilenetv2_050", "--weights", "none", "--data", "synthetic", "--epochs", "1",
            "--batch_size", "16", "--image_size", "32", "--out", str(tmp_path / "run")]
