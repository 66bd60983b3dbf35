"""Training loop guarantees on CPU: determinism, exact resume after SIGKILL/SIGTERM, non-finite policy,
linear probing, and DDP (2 gloo processes) equal to one process with the same global batch."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from replast.checkpoint import load_checkpoint
from replast.train import Trainer

BASE = ["--model", "convnext_atto", "--weights", "none", "--data", "synthetic", "--image_size", "32",
        "--batch_size", "8", "--seed", "3", "--deterministic", "true", "--accelerator", "cpu"]


def replast(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "replast", "finetune", *map(str, args)], capture_output=True,
                            text=True, env=env, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-2000:]
    return result


def final_state(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


def assert_same_weights(a: Path, b: Path, atol: float = 0.0) -> None:
    wa, wb = final_state(a), final_state(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.allclose(wa[key].float(), wb[key].float(), atol=atol, rtol=0), key


def metrics(run: Path) -> dict:
    return json.loads((run / "final.json").read_text())


def test_same_seed_same_result(tmp_path):
    for name in ("a", "b"):
        replast(*BASE, "--epochs", "2", "--out", tmp_path / name)
    assert_same_weights(tmp_path / "a", tmp_path / "b")
    assert metrics(tmp_path / "a")["test_acc"] == metrics(tmp_path / "b")["test_acc"]
    assert (tmp_path / "a" / "metrics.csv").read_text() .split("\n")[1].split(",")[3] == \
        (tmp_path / "b" / "metrics.csv").read_text().split("\n")[1].split(",")[3]
    # Where an epoch's time goes: training steps and evaluation (with its BatchNorm passes), each timed.
    rows = list(csv.DictReader((tmp_path / "a" / "metrics.csv").open()))
    assert len(rows) == 2 and all(float(r["epoch_time_s"]) > 0 and float(r["eval_time_s"]) > 0 for r in rows)
    assert metrics(tmp_path / "a")["eval_time_s"] == pytest.approx(sum(float(r["eval_time_s"]) for r in rows) / 2)


def _start(args: list, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "replast", "finetune", *map(str, args), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def _wait_for_epochs(out: Path, process: subprocess.Popen, epochs: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    csv = out / "metrics.csv"
    while time.time() < deadline:
        if csv.exists() and len(csv.read_text().strip().splitlines()) > epochs:
            return
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    raise AssertionError("run did not reach the epoch in time")


CONTINUAL = ["--reinit.strategy", "cbp", "--reinit.schedule", "every:3", "--reinit.lr_scale", "3",
             "--reinit.lr_warmup_steps", "5"]


@pytest.mark.parametrize(("sig", "reinit"), [(signal.SIGKILL, ["--reinit.strategy", "targeted"]),
                                             (signal.SIGTERM, ["--reinit.strategy", "targeted"]),
                                             (signal.SIGTERM, CONTINUAL)], ids=["kill", "term", "term-every-k"])
def test_killed_run_resumes_to_the_identical_result(tmp_path, sig, reinit):
    # every:K also resumes its state: the last application's masks (cbp protects them, lr_scale scales
    # them), the warm-up position and the events so far
    args = [*BASE, "--epochs", "4", *reinit, "--reinit.batches", "2"]
    replast(*args, "--out", tmp_path / "straight")
    process = _start(args, tmp_path / "killed")
    _wait_for_epochs(tmp_path / "killed", process, 1)
    time.sleep(0.3)  # into the second epoch
    process.send_signal(sig)
    process.wait(timeout=120)
    status = json.loads((tmp_path / "killed" / "status.json").read_text())["status"]
    assert status in ("running", "interrupted")  # never "finished"
    assert not (tmp_path / "killed" / "final.json").exists()
    replast(*args, "--out", tmp_path / "killed", "--resume", "true")
    assert_same_weights(tmp_path / "straight", tmp_path / "killed")
    assert metrics(tmp_path / "straight")["test_acc"] == metrics(tmp_path / "killed")["test_acc"]
    events = [[{k: e[k] for k in ("step", "n_reset")} for e in metrics(tmp_path / run)["reinit_events"]]
              for run in ("straight", "killed")]
    assert events[0] == events[1]


def test_nonfinite_loss_stops_cleanly_and_keeps_last_good_checkpoint(tmp_path):
    result = replast(*BASE, "--epochs", "2", "--train.lr", "1e30", "--out", tmp_path / "nan", check=False)
    assert result.returncode == 1
    status = json.loads((tmp_path / "nan" / "status.json").read_text())
    assert status["status"] == "failed:nonfinite" and status["step"] >= 1
    assert not (tmp_path / "nan" / "final.json").exists()
    raised = replast(*BASE, "--epochs", "1", "--train.lr", "1e30", "--train.on_nonfinite", "raise",
                     "--out", tmp_path / "raise", check=False)
    assert raised.returncode == 2 and "NaN/Inf" in raised.stderr and "Traceback" not in raised.stderr


def test_skipped_steps_leave_the_training_loss_and_the_schedule_alone(cli, tmp_path):
    # lr 1e30 makes every step after the first non-finite: each counted as a loss of 0 (a diverged run
    # showed a train_loss of 0.0), and the scheduler stood still (the lr column kept step 1's rate)
    out = tmp_path / "skip"
    code, _, err = cli(*TINY[:-1], "2", "--train.warmup_epochs", "0", "--train.lr", "1e30",
                       "--train.on_nonfinite", "skip", "--out", out)
    assert code == 0, err
    rows = _csv_rows(out / "metrics.csv")
    assert float(rows[0]["train_loss"]) > 0.5  # step 1's loss, about ln 3, averaged over the steps that ran
    assert rows[1]["train_loss"] == "nan"  # no step of epoch 2 ran
    assert float(rows[1]["lr"]) == 0.0  # the cosine reached its end with the run


def test_linear_probe_changes_only_the_head(tmp_path):
    replast(*BASE, "--epochs", "1", "--train.mode", "linear-probe", "--out", tmp_path / "probe")
    trained = final_state(tmp_path / "probe")
    from replast.loading import load_model_and_data

    torch.manual_seed(3)
    fresh, _ = load_model_and_data("convnext_atto", "synthetic", weights="none", image_size=32, seed=3)
    changed = {k for k, v in fresh.state_dict().items() if not torch.equal(v, trained[k])}
    assert changed and all(k.startswith("head.fc") for k in changed), changed


def test_linear_probe_trains_both_heads_of_a_distilled_vit():
    """A distilled DeiT averages `head` and `head_dist`: the probe froze the freshly drawn `head_dist`, so a
    fixed random half of every prediction was never trained."""
    import timm

    from replast.pipeline import _freeze_backbone

    with torch.device("meta"):
        model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, num_classes=3)
    _freeze_backbone(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias", "head_dist.weight", "head_dist.bias"}


def test_two_process_ddp_equals_one_process_with_the_same_global_batch(tmp_path):
    common = [*BASE, "--epochs", "2", "--train.augment", "false", "--reinit.strategy", "targeted",
              "--reinit.utility", "magnitude", "--reinit.batches", "2"]
    common[common.index("--batch_size") + 1] = "4"
    replast(*common, "--devices", "2", "--strategy", "ddp", "--out", tmp_path / "ddp")
    single = list(common)
    single[single.index("--batch_size") + 1] = "8"
    replast(*single, "--out", tmp_path / "single")
    # Gradients are averaged over ranks instead of one batch: equal up to float summation order.
    assert_same_weights(tmp_path / "ddp", tmp_path / "single", atol=1e-4)
    a, b = metrics(tmp_path / "ddp"), metrics(tmp_path / "single")
    assert a["world_size"] == 2 and b["world_size"] == 1
    assert abs(a["test_acc"] - b["test_acc"]) < 1e-6
    assert len(set(a["mask_digests"])) == 1 and a["mask_digests"][0] == b["mask_digests"][0]


@pytest.mark.slow
def test_compile_path_runs_on_cpu(tmp_path):
    # timm's smallest test network keeps inductor's CPU compilation to about a minute.
    replast("--model", "test_efficientnet", "--weights", "none", "--data", "synthetic", "--image_size", "32",
            "--batch_size", "16", "--epochs", "1", "--accelerator", "cpu", "--train.compile", "true",
            "--out", tmp_path / "compiled")
    final = metrics(tmp_path / "compiled")
    assert final["compiled"] is True and final["first_step_time_s"] > 0
    assert 0.0 <= final["test_acc"] <= 1.0


def test_two_process_ddp_with_batchnorm_re_estimation_evaluates_one_network(tmp_path):
    """Both BatchNorm passes under DDP: re-initialization broadcasts rank 0's statistics, PreciseBN averages
    the ranks' before every evaluation; the saved statistics are finite and the run finishes on both ranks."""
    args = [*BASE, "--model", "mobilenetv2_050", "--epochs", "1", "--reinit.strategy", "targeted",
            "--reinit.utility", "magnitude", "--reinit.batches", "2", "--train.precise_bn", "2"]
    replast(*args, "--devices", "2", "--strategy", "ddp", "--out", tmp_path / "ddp")
    final = metrics(tmp_path / "ddp")
    assert final["world_size"] == 2 and 0.0 <= final["test_acc"] <= 1.0
    report = json.loads((tmp_path / "ddp" / "reinit_report.json").read_text())
    assert report["bn_recomputed"]
    state = final_state(tmp_path / "ddp")
    assert all(torch.isfinite(v).all() for k, v in state.items() if k.endswith(("running_mean", "running_var")))


@contextlib.contextmanager
def _ddp_launch(args, env, log: Path):
    """`replast finetune` in a session of its own, its output in `log`; the launcher and every rank it spawned
    are killed at the end (a hung run would otherwise outlive the test)."""
    with log.open("wb") as sink:
        launcher = subprocess.Popen([sys.executable, "-m", "replast", "finetune", *map(str, args)], env=env,
                                    stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield launcher
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)


def test_two_process_ddp_stops_together_when_only_rank_0_is_signalled(tmp_path):
    """SIGTERM reaches one rank (a pre-emption that signals the launcher only, or every rank a step apart):
    the ranks agree within 25 steps, both checkpoint and exit; before, rank 0 left the loop alone and the run
    hung, rank 1 waiting in the next gradient all-reduce."""
    out = tmp_path / "ddp"
    args = [*BASE, "--epochs", "30", "--train.augment", "false", "--devices", "2", "--strategy", "ddp",
            "--out", out]
    args[args.index("--batch_size") + 1] = "4"
    with _ddp_launch(args, {**os.environ, "OMP_NUM_THREADS": "1"}, tmp_path / "log") as launcher:
        deadline = time.monotonic() + 300
        while not (out / "metrics.csv").exists() or len((out / "metrics.csv").read_text().splitlines()) < 2:
            assert launcher.poll() is None and time.monotonic() < deadline, "the run ended before its first epoch"
            time.sleep(0.5)
        launcher.send_signal(signal.SIGTERM)  # rank 0 (the launcher) only
        code = launcher.wait(timeout=180)
    assert code == 1, (tmp_path / "log").read_text()[-2000:]
    assert json.loads((out / "status.json").read_text())["status"] == "interrupted"
    assert load_checkpoint(out / "checkpoints" / "last.pt")["train_state"]["step"] % 25 == 0  # an agreed step


def test_two_process_ddp_skips_a_step_together_when_one_rank_has_a_nonfinite_loss(tmp_path):
    """--train.on_nonfinite skip with a NaN loss on rank 1 only (at its 3rd training step): both ranks skip
    that step and the run finishes; before, rank 1 skipped alone and rank 0 hung in the gradient all-reduce."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('LOCAL_RANK') == '1':  # the spawned rank only: the launcher is rank 0\n"
        "    import torch.nn.functional as F\n"
        "    _cross_entropy, _calls = F.cross_entropy, [0]\n"
        "    def _nan_on_the_third_call(*args, **kwargs):\n"
        "        _calls[0] += 1\n"
        "        loss = _cross_entropy(*args, **kwargs)\n"
        "        return loss * float('nan') if _calls[0] == 3 else loss\n"
        "    F.cross_entropy = _nan_on_the_third_call\n")
    args = [*BASE, "--epochs", "1", "--train.augment", "false", "--train.on_nonfinite", "skip", "--devices", "2",
            "--strategy", "ddp", "--out", tmp_path / "ddp"]
    args[args.index("--batch_size") + 1] = "4"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(hooks), *filter(None, [os.environ.get("PYTHONPATH")])])}
    with _ddp_launch(args, env, tmp_path / "log") as launcher:
        code = launcher.wait(timeout=240)
    assert code == 0, (tmp_path / "log").read_text()[-2000:]
    assert metrics(tmp_path / "ddp")["world_size"] == 2


def test_deterministic_runs_fix_cublas_and_turn_off_autotuning(monkeypatch):
    """On a GPU, --deterministic true needs cuBLAS's fixed workspace, and MobileNetV2's adaptive pooling
    backward has no deterministic CUDA kernel: it warns there instead of raising. On CPU it stays strict."""
    from replast.train import set_determinism

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    benchmark = torch.backends.cudnn.benchmark
    try:
        set_determinism(True, on_cuda=True)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and not torch.backends.cudnn.benchmark
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        set_determinism(True, on_cuda=False)
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        set_determinism(False, on_cuda=True)  # a later run in the same process is not left deterministic
        assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = benchmark


class _OneProcessFabric:
    """Enough of Fabric for `evaluate` to run one rank's slice in this process."""

    device = torch.device("cpu")

    def autocast(self):
        return contextlib.nullcontext()

    def all_reduce(self, t, reduce_op="sum"):
        return t


def test_evaluate_survives_a_rank_whose_slice_of_the_last_batch_is_empty():
    # 3 test images, batch 1 per rank, 2 ranks: rank 1 gets nothing of the last global batch, and
    # torchmetrics rejected the empty input (that rank died and the other hung in all_reduce)
    from replast.data import load_dataset
    from replast.preprocessing import Preprocessing
    from replast.train import evaluate

    data = load_dataset("synthetic", Preprocessing(input_size=32), max_samples=12, val_fraction=0.2,
                        test_fraction=0.2)
    assert len(data.indices["test"]) == 3
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3))
    seen = 0
    for rank in (0, 1):
        loader = data.loader("test", 1, train=False, rank=rank, world_size=2)
        seen += sum(len(y) for _, y in loader)
        evaluate(_OneProcessFabric(), model, loader, data.num_classes)
    assert seen == 3


# ---- resume keeps the training curve and the plasticity rows ---------------------------------------
# A small CNN with BatchNorm and a head the tracker can find; 13 optimizer steps per epoch.
TINY = ["finetune", "--model", "mobilenetv2_050", "--weights", "none", "--data", "synthetic", "--image_size", "32",
        "--batch_size", "16", "--seed", "3", "--deterministic", "true", "--accelerator", "cpu", "--epochs", "3"]


def _interrupt_at(monkeypatch, step: int) -> None:
    """SIGTERM this process right after optimizer step `step` (as a cluster's pre-emption would)."""
    original = Trainer.fit

    def fit(self, train_loader, val_loader, progress=None):
        def hook(state):
            if state.step == step:
                os.kill(os.getpid(), signal.SIGTERM)
        return original(self, train_loader, val_loader, hook)

    monkeypatch.setattr(Trainer, "fit", fit)


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _straight_and_resumed(cli, tmp_path, monkeypatch, step, extra=()):
    args = [*TINY, *extra]
    assert cli(*args, "--out", tmp_path / "straight")[0] == 0
    with monkeypatch.context() as m:
        _interrupt_at(m, step)
        code, _, _ = cli(*args, "--out", tmp_path / "resumed")
    assert code == 1  # interrupted
    assert cli(*args, "--out", tmp_path / "resumed", "--resume", "true")[0] == 0
    return tmp_path / "straight", tmp_path / "resumed"


# 13 training steps per epoch with these options: step 20 is in the middle of epoch 2.
@pytest.mark.parametrize("step", [20, 26], ids=["mid-epoch", "last-step-of-epoch"])
def test_resumed_run_writes_the_same_train_metrics_as_an_uninterrupted_one(cli, tmp_path, monkeypatch, step):
    straight, resumed = _straight_and_resumed(cli, tmp_path, monkeypatch, step)
    a, b = _csv_rows(straight / "metrics.csv"), _csv_rows(resumed / "metrics.csv")
    assert [r["val_acc"] for r in a] == [r["val_acc"] for r in b]  # the weights do resume exactly
    for key in ("train_loss", "train_acc"):
        assert [r[key] for r in a] == [r[key] for r in b], key


def test_resumed_run_keeps_the_plasticity_rows_written_before_the_interruption(cli, tmp_path, monkeypatch):
    straight, resumed = _straight_and_resumed(cli, tmp_path, monkeypatch, 20, ["--train.track_plasticity", "5"])
    a, b = _csv_rows(straight / "plasticity.csv"), _csv_rows(resumed / "plasticity.csv")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    cols = [c for c in _csv_rows(straight / "metrics.csv")[0] if c.startswith("plasticity_")]
    assert cols and [[r[c] for c in cols] for r in _csv_rows(straight / "metrics.csv")] == \
        [[r.get(c) for c in cols] for r in _csv_rows(resumed / "metrics.csv")]


def test_track_plasticity_runs_and_writes_plasticity_csv(cli, tmp_path):
    # the tracker hands Fabric's wrapper (module names prefixed `_forward_module.`) to cheap_metrics
    out = tmp_path / "run"
    code, _, err = cli(*TINY[:-1], "1", "--train.track_plasticity", "5", "--out", out)
    assert code == 0, err
    rows = _csv_rows(out / "plasticity.csv")
    assert [int(r["step"]) for r in rows] == [5, 10]
    assert "plasticity_dormant_fraction" in _csv_rows(out / "metrics.csv")[0]


# ---- what a checkpoint carries besides model and optimizer -------------------------------------------
def _tiny_trainer(tmp_path, total_steps: int = 10, precision: str = "32-true") -> Trainer:
    from lightning.fabric import Fabric
    from lightning.fabric.plugins import MixedPrecision

    from replast.config import FinetuneConfig
    from replast.optim import build_scheduler

    # Fabric turns 16-mixed into bf16-mixed on a CPU: the plugin keeps fp16 with its GradScaler, as on a GPU
    plugins = [MixedPrecision("16-mixed", "cpu")] if precision == "16-mixed" else None
    fabric = Fabric(accelerator="cpu", devices=1, precision=None if plugins else precision, plugins=plugins)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    scheduler = build_scheduler(optimizer, total_steps, 0)
    return Trainer(fabric, model, optimizer, scheduler, FinetuneConfig(), tmp_path, 2)


def test_resume_restores_the_loss_scale_of_16_mixed(tmp_path):
    trainer = _tiny_trainer(tmp_path, precision="16-mixed")
    with trainer.fabric.autocast():
        loss = trainer.model(torch.randn(8, 4)).float().pow(2).mean() * 1e30  # overflows: the scale halves
    trainer.fabric.backward(loss)
    trainer.optimizer.step()
    scaled = trainer.fabric.strategy.precision.state_dict()
    assert scaled["scale"] == 2.0 ** 15
    trainer.save("last")
    resumed = _tiny_trainer(tmp_path, precision="16-mixed")
    resumed.resume(tmp_path / "checkpoints" / "last.pt")
    assert resumed.fabric.strategy.precision.state_dict()["scale"] == scaled["scale"]


def test_resume_refuses_a_checkpoint_of_another_schedule(tmp_path):
    # e.g. --epochs raised on resume: the saved cosine had already reached 0, so every added epoch ran at lr 0
    from replast.errors import CheckpointError

    _tiny_trainer(tmp_path, total_steps=10).save("last")
    with pytest.raises(CheckpointError, match=r"schedule of 0 warm-up \+ 10 cosine steps, this run has 0 "
                                              r"warm-up \+ 30 cosine steps; resume with the --epochs"):
        _tiny_trainer(tmp_path, total_steps=30).resume(tmp_path / "checkpoints" / "last.pt")
    _tiny_trainer(tmp_path, total_steps=10).resume(tmp_path / "checkpoints" / "last.pt")


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no handler sees it."""


def test_run_killed_after_its_last_checkpoint_resumes_with_every_metrics_row(cli, tmp_path, monkeypatch):
    # last.pt of the final epoch was on disk before metrics.csv had that epoch's row: the resume found no
    # epoch left to run and finished with the row missing
    from replast import runfiles

    args = [*TINY[:-1], "2", "--train.warmup_epochs", "0", "--out", tmp_path / "run"]
    write_rows = runfiles.write_rows

    def killed_at_epoch_2(path, rows):
        if Path(path).name == "metrics.csv" and len(rows) == 2:
            raise _Killed
        write_rows(path, rows)

    with monkeypatch.context() as m:
        m.setattr(runfiles, "write_rows", killed_at_epoch_2)
        with pytest.raises(_Killed):
            cli(*args)
    assert cli(*args, "--resume", "true")[0] == 0
    assert [r["epoch"] for r in _csv_rows(tmp_path / "run" / "metrics.csv")] == ["1", "2"]
