"""The fine-tuning loop on Lightning Fabric: `setup_fabric` decides device and precision, `fit` trains.

One epoch = one pass of the device-resident training loader; evaluation every epoch with torchmetrics
(synced across ranks); per-epoch rows in metrics.csv, TensorBoard scalars, and a `last`/`best` checkpoint
written atomically by rank 0. SIGTERM/SIGINT save the exact data position and stop cleanly (all ranks together).
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.fabric import Fabric
from lightning.fabric.loggers import TensorBoardLogger
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from replast import runfiles
from replast.checkpoint import load_checkpoint, save_checkpoint
from replast.config import FinetuneConfig
from replast.errors import CheckpointError, ConfigError, NonFiniteError
from replast.optim import current_lr

LOG_EVERY = 25


def resolve_precision(precision: str, accelerator: str) -> str:
    if precision != "auto":
        return precision
    if accelerator in ("cuda", "gpu") or (accelerator == "auto" and torch.cuda.is_available()):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def setup_fabric(cfg: FinetuneConfig) -> Fabric:
    """The only place that decides device, precision and distribution."""
    accelerator = cfg.accelerator
    if accelerator in ("cuda", "gpu") and cfg.devices > torch.cuda.device_count():
        raise ConfigError(f"--devices {cfg.devices} asks for more GPUs than exist "
                          f"({torch.cuda.device_count()} visible); lower --devices or use --accelerator cpu")
    if accelerator == "auto" and torch.cuda.is_available() and cfg.devices > torch.cuda.device_count():
        raise ConfigError(f"--devices {cfg.devices} asks for more GPUs than exist ({torch.cuda.device_count()})")
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--accelerator mps: Apple's MPS backend is not available on this machine; "
                          "use --accelerator auto or cpu")
    set_determinism(cfg.deterministic, on_cuda=accelerator in ("cuda", "gpu")
                    or (accelerator == "auto" and torch.cuda.is_available()))
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    # TensorBoard event files land in OUT/tensorboard/ (written by rank 0 at the end of each epoch).
    logger = TensorBoardLogger(root_dir=cfg.out, name="tensorboard", version="")
    return Fabric(accelerator=accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=cfg.strategy,
                  precision=resolve_precision(cfg.train.precision, accelerator), loggers=[logger])


def set_determinism(deterministic: bool, *, on_cuda: bool) -> None:
    """torch's deterministic algorithms, or cuDNN autotuning. On CUDA, cuBLAS is reproducible only with a
    fixed workspace (read when CUDA starts), and a few kernels have no deterministic version (adaptive
    average pooling's backward, in MobileNetV2 and EfficientNet): there they warn instead of stopping the run."""
    if deterministic and on_cuda:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=on_cuda)
    torch.backends.cudnn.benchmark = not deterministic


def make_metrics(num_classes: int) -> MetricCollection:
    return MetricCollection({
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "balanced_acc": MulticlassAccuracy(num_classes, average="macro"),
        "f1": MulticlassF1Score(num_classes, average="macro"),
    })


@torch.inference_mode()
def evaluate(fabric: Fabric, model: nn.Module, loader, num_classes: int) -> dict[str, float]:
    """Loss and top-1 / balanced accuracy / macro-F1 over a whole split, reduced across ranks."""
    was_training = model.training
    model.eval()
    metrics = make_metrics(num_classes).to(fabric.device)
    loss_sum = torch.zeros((), device=fabric.device)
    count = torch.zeros((), device=fabric.device)
    for x, y in loader:
        with fabric.autocast():
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        count += y.numel()
        if y.numel():  # an uneven last batch leaves some ranks nothing; torchmetrics rejects empty input
            metrics.update(logits.float(), y)
    loss_sum, count = fabric.all_reduce(loss_sum, reduce_op="sum"), fabric.all_reduce(count, reduce_op="sum")
    result = {k: float(v) for k, v in metrics.compute().items()}
    result["loss"] = float(loss_sum / count.clamp_min(1))
    model.train(was_training)
    return result


def set_train_mode(model: nn.Module, linear_probe: bool) -> None:
    """A linear probe trains its head on features computed as in evaluation: the whole model stays in eval mode
    (BatchNorm statistics fixed, dropout off); otherwise every module trains."""
    model.train(not linear_probe)


class StopRequested:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps, so it can checkpoint and exit."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    @contextmanager
    def installed(self):
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for s in previous:
                signal.signal(s, self._handle)
        except ValueError:  # not the main thread: signals stay with the caller
            previous = {}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        self.signum = signum


@dataclass
class TrainState:
    """Everything that a resume needs besides model and optimizer: counters, best score, history."""

    epoch: int = 0
    """Epochs completed."""
    step: int = 0
    position: int = 0
    """Batches of the current epoch already consumed (non-zero only for a mid-epoch checkpoint)."""
    best_val_acc: float = -1.0
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)
    partial: dict[str, float] = field(default_factory=dict)
    """Training sums of the current epoch so far (global over ranks; only with a mid-epoch checkpoint)."""

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "position": self.position,
                "best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch, "partial": dict(self.partial)}


@dataclass
class FitResult:
    state: TrainState
    stopped: str | None = None
    """None when all epochs ran; 'interrupted' or 'nonfinite' otherwise."""
    nonfinite_step: int | None = None


@dataclass
class Trainer:
    """Holds what one fit needs; `fit()` runs the epochs. Hooks let the pipeline add re-init schedules."""

    fabric: Fabric
    model: nn.Module
    optimizer: Any
    scheduler: Any
    cfg: FinetuneConfig
    run_dir: Path
    num_classes: int
    step_hooks: list[Callable[[int], None]] = field(default_factory=list)
    eval_hooks: list[Callable[[], None]] = field(default_factory=list)
    """Run before every evaluation (e.g. PreciseBN); the pipeline's final test evaluation follows the last."""
    optimizer_step: Callable[[], None] | None = None
    tracker: Callable[[nn.Module], dict[str, float]] | None = None
    state: TrainState = field(default_factory=TrainState)
    settings: Any = None
    """The resolved optimizer settings (recorded in final.json)."""
    stateful: dict[str, Any] = field(default_factory=dict)
    """Hook objects with state_dict()/load_state_dict(), checkpointed under their key (e.g. the re-init schedule)."""
    first_step_s: float | None = None
    """Wall time of the first step of this process (includes compilation with train.compile)."""

    # ---- checkpoints ---------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        state = {
            "model": unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "train_state": self.state.to_dict(),
            "history": [dict(r) for r in self.state.history],
            "rng_cpu": torch.get_rng_state(),
            **{key: hooks.state_dict() for key, hooks in self.stateful.items()},
        }
        # 16-mixed's loss scale: a resume that restarts it at 2**16 skips steps the uninterrupted run took
        precision = self.fabric.strategy.precision.state_dict()
        if precision:
            state["precision"] = precision
        if torch.cuda.is_available():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        return state

    def save(self, name: str) -> None:
        if self.fabric.is_global_zero:
            save_checkpoint(self.run_dir / "checkpoints" / f"{name}.pt", self.checkpoint_state())
        self.fabric.barrier()

    def resume(self, path: Path) -> None:
        ckpt = load_checkpoint(path, map_location="cpu")
        _check_same_schedule(path, ckpt.get("scheduler"), self.scheduler.state_dict())
        try:
            unwrap_model(self.model).load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            ts = ckpt["train_state"]
            state = TrainState(int(ts["epoch"]), int(ts["step"]), int(ts["position"]), float(ts["best_val_acc"]),
                               int(ts["best_epoch"]), list(ckpt.get("history", [])), dict(ts.get("partial", {})))
            if "precision" in ckpt:
                self.fabric.strategy.precision.load_state_dict(ckpt["precision"])
            torch.set_rng_state(ckpt["rng_cpu"])
            for key, hooks in self.stateful.items():
                if key in ckpt:  # absent in checkpoints written before it was recorded
                    hooks.load_state_dict(ckpt[key])
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as e:
            why = " ".join(str(e).split())[:200] or type(e).__name__
            raise CheckpointError(f"checkpoint {path} does not match this model, optimizer or run ({why}); "
                                  "resume with the options it was written with, or start without --resume") from e
        self.state = state
        if "rng_cuda" in ckpt and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng_cuda"])

    # ---- the loop ------------------------------------------------------------------------------
    def fit(self, train_loader, val_loader, progress=None) -> FitResult:
        stop = StopRequested()
        with stop.installed():
            while self.state.epoch < self.cfg.epochs:
                outcome = self._train_epoch(train_loader, stop, progress)
                if outcome is not None:
                    return outcome
                self._end_epoch(val_loader)
        return FitResult(self.state)

    def _train_epoch(self, loader, stop: StopRequested, progress) -> FitResult | None:
        cfg, state = self.cfg, self.state
        set_train_mode(self.model, cfg.train.mode == "linear-probe")
        loader.set_epoch(state.epoch)
        if state.position:
            loader.skip(state.position)
        # a mid-epoch resume continues the sums it stopped with (rank 0 holds the global ones)
        carried = state.partial if state.position and self.fabric.is_global_zero else {}
        state.partial = {}
        loss_sum = torch.tensor(carried.get("loss_sum", 0.0), device=self.fabric.device)
        correct = torch.tensor(carried.get("correct", 0.0), device=self.fabric.device)
        seen = int(carried.get("seen", 0))
        started = time.perf_counter() - carried.get("time_s", 0.0)
        for x, y in loader:
            if self.first_step_s is None:
                loss, logits = self._timed_first_step(x, y)
            else:
                loss, logits = self._step(x, y)
            if loss is not None:  # None: a non-finite step skipped, left out of the epoch's loss and accuracy
                loss_sum += loss.detach() * y.numel()
                correct += (logits.detach().argmax(1) == y).sum()
                seen += y.numel()
            state.step += 1
            state.position += 1
            for hook in self.step_hooks:
                hook(state.step)
            if progress is not None:
                progress(state)
            stopping = False
            # Ranks leave the loop together or not at all (one leaving alone leaves the others waiting in
            # the next gradient all-reduce forever): under DDP they agree every LOG_EVERY steps.
            due = state.step % LOG_EVERY == 0
            if due or (stop and self.fabric.world_size == 1):
                loss_all, stopping = self._agree(loss_sum, stop)
                if not math.isfinite(loss_all) and (stopping or (due and cfg.train.on_nonfinite != "skip")):
                    return self._nonfinite(state.step)
            if stopping:
                sums = self._summed(loss_sum, correct, seen)
                state.partial = {"loss_sum": float(sums[0]), "correct": float(sums[1]), "seen": float(sums[2]),
                                 "time_s": time.perf_counter() - started}
                self.save("last")
                return FitResult(state, "interrupted")
        totals = self._summed(loss_sum, correct, seen)
        if not torch.isfinite(totals[0]):  # summed over ranks: every rank sees the same answer
            return self._nonfinite(state.step)
        seen_all = float(totals[2]) or float("nan")  # every step skipped: no training loss to report
        self._epoch_train_metrics = {"train_loss": float(totals[0]) / seen_all, "train_acc": float(totals[1]) / seen_all,
                                     "epoch_time_s": time.perf_counter() - started}
        return None

    def _summed(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> torch.Tensor:
        """[loss sum, correct, seen] of the epoch so far, summed over ranks."""
        return self.fabric.all_reduce(torch.stack([loss_sum, correct, loss_sum.new_tensor(float(seen))]),
                                      reduce_op="sum")

    def _nonfinite_anywhere(self, loss: torch.Tensor) -> bool:
        """True on every rank when any rank's loss is NaN/Inf: all skip the step, or none (a rank skipping
        alone would leave the others waiting in the gradient all-reduce)."""
        bad = (~torch.isfinite(loss.detach())).float()
        return bool(self.fabric.all_reduce(bad, reduce_op="sum") > 0)

    def _agree(self, loss_sum: torch.Tensor, stop: StopRequested) -> tuple[float, bool]:
        """The training loss summed over ranks, and whether any rank was asked to stop (one collective)."""
        both = self.fabric.all_reduce(torch.stack([loss_sum, loss_sum.new_tensor(float(bool(stop)))]),
                                      reduce_op="sum")
        return float(both[0]), bool(both[1] > 0)

    def _timed_first_step(self, x: torch.Tensor, y: torch.Tensor):
        """The first step carries torch.compile's compilation and cuDNN autotuning: timed on its own."""
        started = time.perf_counter()
        out = self._step(x, y)
        if self.fabric.device.type == "cuda":
            torch.cuda.synchronize(self.fabric.device)
        self.first_step_s = time.perf_counter() - started
        return out

    def _nonfinite(self, step: int) -> FitResult:
        if self.cfg.train.on_nonfinite == "raise":
            raise NonFiniteError(f"loss became NaN/Inf at step {step}; lower the learning rate "
                                 f"or use --train.on_nonfinite skip")
        return FitResult(self.state, "nonfinite", step)

    def _step(self, x: torch.Tensor, y: torch.Tensor):
        # Gradients are cleared here rather than after the step, so step hooks (plasticity tracking) see them.
        self.optimizer.zero_grad(set_to_none=True)
        with self.fabric.autocast():
            logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.train.label_smoothing)
        skipped = self.cfg.train.on_nonfinite == "skip" and self._nonfinite_anywhere(loss)
        if not skipped:
            self.fabric.backward(loss)
            if self.optimizer_step is not None:
                self.optimizer_step()
            else:
                self.optimizer.step()
        # a skipped step still counts: the schedule follows state.step, so the next step gets its own rate
        self.scheduler.step_update(self.state.step + 1)
        return (None if skipped else loss), logits

    def _end_epoch(self, val_loader) -> None:
        state = self.state
        state.epoch += 1
        state.position = 0
        started = time.perf_counter()
        for hook in self.eval_hooks:
            hook()
        val = evaluate(self.fabric, self.model, val_loader, self.num_classes)  # floats: the device is done
        row = {"epoch": state.epoch, "step": state.step, "lr": current_lr(self.optimizer),
               **self._epoch_train_metrics, "eval_time_s": time.perf_counter() - started,
               **{f"val_{k}": v for k, v in val.items()}}
        if self.tracker is not None:
            row.update({f"plasticity_{k}": v for k, v in self.tracker(self.model).items()})
        state.history.append(row)
        if val["acc"] > state.best_val_acc:
            state.best_val_acc, state.best_epoch = val["acc"], state.epoch
            self.save("best")
        # metrics.csv before last.pt: a run killed in between redoes this epoch on resume and rewrites the
        # row; the other order left a finished resume without the final epoch's row
        if self.fabric.is_global_zero:
            runfiles.write_rows(self.run_dir / "metrics.csv", state.history)
        self.save("last")
        self.fabric.log_dict({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=state.step)


def _check_same_schedule(path: Path, saved: Any, current: dict[str, Any]) -> None:
    """The schedule's lengths follow --epochs, --batch_size, the data and --train.warmup_epochs; loading
    another run's would keep its cosine, e.g. a learning rate of 0 for every epoch added on resume."""
    if not isinstance(saved, dict):
        return  # a malformed checkpoint: resume() reports it
    lengths = [tuple(d.get(k) for k in ("warmup_t", "t_initial")) for d in (saved, current)]
    if lengths[0] != lengths[1]:
        was, now = (f"{w} warm-up + {c} cosine steps" for w, c in lengths)
        raise CheckpointError(f"checkpoint {path} was written for a schedule of {was}, this run has {now}; "
                              "resume with the --epochs, --batch_size, data options and --train.warmup_epochs "
                              "it was written with, or start without --resume")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under Fabric/DDP wrappers and torch.compile."""
    inner = getattr(model, "module", model)
    return getattr(inner, "_orig_mod", inner)


