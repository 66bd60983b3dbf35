"""Shared fixtures: a quiet CPU environment, a helper that runs the real CLI in-process, and a fake trainer
for sweeps."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# One intra-op thread: on a busy 2-core machine OpenMP spin-waiting makes torch 50x slower, not faster.
os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("REPLAST_TEST_THREADS", "1"))

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from replast.backends import keep_freed_host_memory  # noqa: E402

keep_freed_host_memory()  # as the command line does: CPU steps without fresh page faults


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
def benchmark():
    """Import a script of benchmarks/ by name (the folder is not a package)."""
    import importlib.util
    from pathlib import Path

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def tiny_run_args(tmp_path):
    """Options of a seconds-long fine-tune on synthetic data with a small random-init CNN."""
    return ["--model", "mobilenetv2_050", "--weights", "none", "--data", "synthetic", "--epochs", "1",
            "--batch_size", "16", "--image_size", "32", "--out", str(tmp_path / "run")]


# A stand-in for `replast finetune --config`: writes the run directory of docs/CONTRACTS.md with known
# numbers. seed 13 crashes while FAKE_CRASH=1; data 'bad' is bad input (exit 2); FAKE_SLEEP slows it.
FAKE_TRAINER = textwrap.dedent('''
    import json, os, sys, time, yaml
    cfg = yaml.safe_load(open(sys.argv[sys.argv.index("--config") + 1]))
    out = cfg["out"]
    def write(name, text):
        tmp = os.path.join(out, "." + name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(out, name))
    def status(s, **kw):
        write("status.json", json.dumps({"status": s, "updated": "now", **kw}))
    if cfg["data"] == "bad":
        print("replast: error: unknown dataset 'bad'", file=sys.stderr)
        sys.exit(2)
    status("running")
    with open(os.path.join(out, "attempts.txt"), "a") as f:
        f.write(f"resume={cfg['resume']}\\n")
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    if cfg["seed"] == 13 and os.environ.get("FAKE_CRASH") == "1":
        raise RuntimeError("simulated crash")
    base = 0.6 if cfg["reinit"]["strategy"] == "none" else 0.7
    rows = ["epoch,step,lr,train_loss,train_acc,val_loss,val_acc,val_balanced_acc,val_f1,epoch_time_s"]
    for e in range(1, cfg["epochs"] + 1):
        acc = base + 0.05 * e + 0.01 * cfg["seed"]
        rows.append(f"{e},{10 * e},0.01,{1 - acc},{acc},{1 - acc},{acc},{acc},{acc},2.0")
    write("metrics.csv", "\\n".join(rows) + "\\n")
    final = {"test_acc": acc, "test_balanced_acc": acc, "test_f1": acc, "test_loss": 1 - acc,
             "best_val_acc": acc, "best_epoch": cfg["epochs"], "final_val_acc": acc, "epochs": cfg["epochs"],
             "wall_time_s": 3.0, "reinit_time_s": 0.5, "epoch_time_s": 2.0,
             "gpu": os.environ.get("CUDA_VISIBLE_DEVICES", ""), "threads": os.environ.get("OMP_NUM_THREADS", "")}
    write("final.json", json.dumps(final))
    status("finished")
''')


@pytest.fixture
def fake_trainer(tmp_path, monkeypatch):
    """Sweeps launch FAKE_TRAINER instead of `replast finetune`; returns the script's path."""
    from replast import launchers

    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    monkeypatch.setattr(launchers, "finetune_command",
                        lambda config: [sys.executable, str(script), "--config", str(config)])
    monkeypatch.setattr(launchers, "visible_gpus", lambda: [])
    return script
