"""One job end to end: load model and data, optionally re-initialize, fine-tune, test, write the run directory.

    replast finetune --model mobilenetv2_100 --data br35h --epochs 5 --reinit.strategy targeted --out runs/x

`finetune(cfg)` is what the CLI, the demo and every sweep run call; its files are listed in docs/CONTRACTS.md.
Nothing is written until the model, the data, the re-initialization and a resumed checkpoint have all
been accepted, so bad input never leaves a run directory that looks like a run nor touches an earlier one.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from lightning.fabric import Fabric
from torch import nn

from replast import environment, precise_bn, runfiles, schedule
from replast.checkpoint import write_json
from replast.config import FinetuneConfig
from replast.diagnosis import diagnose
from replast.errors import ConfigError
from replast.loading import first_batches, load_model_and_data
from replast.models import classifier_names, model_family
from replast.optim import build_optimizer, build_scheduler, resolve
from replast.progress import epoch_progress
from replast.reinit import restore_plasticity
from replast.tracking import attach_tracker
from replast.train import Trainer, evaluate, setup_fabric, unwrap_model


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run one fine-tuning job as configured; returns the final record (also written to final.json)."""
    cfg.validate()
    started = time.perf_counter()
    fabric = setup_fabric(cfg)
    fabric.launch()
    fabric.seed_everything(cfg.seed, verbose=False)
    run_dir = Path(cfg.out)
    if fabric.is_global_zero:
        runfiles.prepare_run_dir(run_dir, overwrite=cfg.overwrite, resume=cfg.resume)
    model, data = _load_model_and_data(cfg, fabric)
    family = model_family(model)
    loaders = _loaders(cfg, data, fabric)
    if cfg.train.mode == "linear-probe":
        _freeze_backbone(model)
    needs_batches = cfg.reinit.strategy != "none" or cfg.diagnose
    utility_batches = _utility_batches(cfg, data, fabric) if needs_batches else []
    diagnoses = {"before_reinit": diagnose(model, utility_batches).to_dict()} if cfg.diagnose else {}
    reinit, reinit_files = _reinitialize(cfg, model, utility_batches, data, fabric)
    if cfg.diagnose and reinit is not None:
        diagnoses["after_reinit"] = diagnose(model, utility_batches).to_dict()
    if family == "cnn" and cfg.train.channels_last and fabric.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    trainer = _make_trainer(cfg, fabric, model, family, data.num_classes, len(loaders["train"]), run_dir)
    if reinit is not None:
        schedule.attach(trainer, reinit, utility_batches)
    if cfg.train.track_plasticity:
        attach_tracker(trainer, first_batches(data, "val", loaders["val"].batch_size, 1, seed=cfg.seed,
                                              rank=fabric.global_rank, world_size=fabric.world_size)[0])
    if cfg.train.precise_bn:
        precise_bn.attach(trainer, _train_batches(cfg, data, fabric, cfg.train.precise_bn), model)
    last = run_dir / "checkpoints" / "last.pt"
    if cfg.resume and last.exists():
        trainer.resume(last)
    if fabric.is_global_zero:
        _start_run_files(cfg, run_dir, data, reinit_files)
    with epoch_progress(cfg.epochs, len(loaders["train"]), enabled=fabric.is_global_zero) as progress:
        result = trainer.fit(loaders["train"], loaders["val"], progress)
    if result.stopped is not None:
        return _stopped(fabric, run_dir, result)
    test = evaluate(fabric, trainer.model, loaders["test"], data.num_classes)
    if cfg.diagnose:
        diagnoses["after_training"] = diagnose(unwrap_model(trainer.model), utility_batches).to_dict()
    final = _final_record(cfg, trainer, test, reinit, time.perf_counter() - started)
    if fabric.is_global_zero:
        if diagnoses:
            write_json(run_dir / "diagnosis.json", diagnoses)
        write_json(run_dir / "final.json", final)
        runfiles.write_status(run_dir, runfiles.FINISHED)
    return {**final, "global_rank": fabric.global_rank}


def _load_model_and_data(cfg: FinetuneConfig, fabric: Fabric):
    # Rank 0 decodes and caches the dataset first; the other ranks then read its cache.
    with fabric.rank_zero_first():
        return load_model_and_data(
            cfg.model, cfg.data, weights=cfg.weights, device=fabric.device, drop_path=cfg.train.drop_path,
            image_size=cfg.image_size, seed=cfg.seed, val_fraction=cfg.val_fraction,
            test_fraction=cfg.test_fraction, train_fraction=cfg.train_fraction, max_samples=cfg.max_samples,
            max_bad_fraction=cfg.max_bad_fraction, device_cache=cfg.device_cache,
        )


def _start_run_files(cfg: FinetuneConfig, run_dir: Path, data, extra: dict[str, Any]) -> None:
    """The first writes of a run, once every input has been accepted."""
    if cfg.overwrite and not cfg.resume:
        runfiles.clear_previous(run_dir)
    runfiles.write_config(run_dir, cfg.to_dict())
    write_json(run_dir / "splits.json", data.record())
    for name, record in extra.items():
        write_json(run_dir / name, record)
    runfiles.write_status(run_dir, "running")


def _loaders(cfg: FinetuneConfig, data, fabric: Fabric) -> dict[str, Any]:
    eval_bs = cfg.train.eval_batch_size or 2 * cfg.batch_size
    ranks = {"rank": fabric.global_rank, "world_size": fabric.world_size}
    train = data.loader("train", cfg.batch_size, train=True, augment=cfg.train.augment, seed=cfg.seed, **ranks)
    if len(train) == 0:  # training drops the last incomplete batch: not one step would run
        raise ConfigError(f"the training split has {len(train.indices)} images, fewer than one batch of "
                          f"{train.global_batch_size}; lower --batch_size or raise --train_fraction / --max_samples")
    return {
        "train": train,
        "val": data.loader("val", eval_bs, train=False, seed=cfg.seed, **ranks),
        "test": data.loader("test", eval_bs, train=False, seed=cfg.seed, **ranks),
    }


def _freeze_backbone(model: nn.Module) -> None:
    heads = classifier_names(model)  # a distilled ViT's head_dist is trained along with its head
    for name, param in model.named_parameters():
        param.requires_grad_(any(name.startswith(head + ".") for head in heads))


def _reinitialize(cfg: FinetuneConfig, model: nn.Module, batches: list, data, fabric: Fabric):
    """Apply the configured strategy before training (also on resume, to rebuild identical masks).

    Returns the report and the files that record it ({name: JSON record}), written once the run starts.
    """
    if cfg.reinit.strategy == "none":
        return None, {}
    files: dict[str, Any] = {}
    options = asdict(cfg.reinit)
    scope_time = 0.0
    if cfg.reinit.scope == "auto":
        started = time.perf_counter()
        scope = _auto_scope(cfg, model, data, batches)
        scope_time = time.perf_counter() - started
        options["scope"] = scope.fractions
        files["autoscope.json"] = {"fractions": scope.fractions, "reason": scope.reason, "time_s": scope_time}
    report = restore_plasticity(model, batches, seed=cfg.seed, **options)
    # Choosing the layers costs diagnosis passes: count them, or the overhead of scope auto looks free.
    report.scope_time_s = scope_time
    report.total_time_s += scope_time
    report.mask_digests = _mask_digests(fabric, report.masks)
    if len(set(report.mask_digests)) != 1:
        raise RuntimeError(f"re-initialization masks differ across ranks: {report.mask_digests}")
    files["reinit_report.json"] = report.to_dict()
    return report, files


def _mask_digests(fabric: Fabric, masks: dict[str, torch.Tensor]) -> list[str]:
    """One short hash of all masks per rank; every rank must choose exactly the same entries."""
    digest = hashlib.sha256()
    for name in sorted(masks):
        digest.update(name.encode())
        digest.update(masks[name].detach().cpu().numpy().tobytes())
    mine = digest.hexdigest()[:16]
    if fabric.world_size == 1:
        return [mine]
    gathered: list[str] = [""] * fabric.world_size
    torch.distributed.all_gather_object(gathered, mine)
    return gathered


def _train_batches(cfg: FinetuneConfig, data, fabric: Fabric, count: int) -> list:
    return first_batches(data, "train", cfg.batch_size, count, seed=cfg.seed,
                         rank=fabric.global_rank, world_size=fabric.world_size)


def _utility_batches(cfg: FinetuneConfig, data, fabric: Fabric) -> list:
    return _train_batches(cfg, data, fabric, cfg.reinit.batches)


def _auto_scope(cfg: FinetuneConfig, model: nn.Module, data, batches):
    from replast.autoscope import choose_against_photos

    return choose_against_photos(model, batches, data, cfg.batch_size, cfg.seed)


def _make_trainer(cfg, fabric, model, family, num_classes, steps_per_epoch, run_dir) -> Trainer:
    settings = resolve(cfg.train, family, cfg.batch_size * fabric.world_size)
    optimizer = build_optimizer(model, cfg.train, settings, fused=fabric.device.type == "cuda")
    scheduler = build_scheduler(optimizer, cfg.epochs * steps_per_epoch,
                                round(cfg.train.warmup_epochs * steps_per_epoch))
    if cfg.train.compile:
        model = torch.compile(model)
    model, optimizer = fabric.setup(model, optimizer)
    return Trainer(fabric, model, optimizer, scheduler, cfg, run_dir, num_classes, settings=settings)


def _final_record(cfg: FinetuneConfig, trainer: Trainer, test: dict, reinit, wall: float) -> dict[str, Any]:
    history = trainer.state.history
    epoch_times = [row["epoch_time_s"] for row in history]
    eval_times = [row["eval_time_s"] for row in history if "eval_time_s" in row]  # absent: resumed from before it
    continual = trainer.stateful.get("reinit_schedule")
    return {
        **{f"test_{k}": v for k, v in test.items()},
        "best_val_acc": trainer.state.best_val_acc,
        "best_epoch": trainer.state.best_epoch,
        "final_val_acc": history[-1]["val_acc"] if history else float("nan"),
        "epochs": trainer.state.epoch,
        "steps": trainer.state.step,
        "wall_time_s": wall,
        "epoch_time_s": sum(epoch_times) / max(len(epoch_times), 1),
        "eval_time_s": sum(eval_times) / len(eval_times) if eval_times else float("nan"),
        "first_step_time_s": trainer.first_step_s,
        "compiled": cfg.train.compile,
        "reinit_time_s": reinit.total_time_s if reinit is not None else 0.0,
        "reinit_utility_time_s": reinit.utility_time_s if reinit is not None else 0.0,
        "reinit_fraction": reinit.n_reset / max(reinit.numel, 1) if reinit is not None else 0.0,
        "reinit_events": continual.events if continual is not None else [],
        "mask_digests": getattr(reinit, "mask_digests", []),
        "optimizer": asdict(trainer.settings),
        "device": str(trainer.fabric.device),
        "world_size": trainer.fabric.world_size,
        "environment": environment.describe(trainer.fabric.device),
    }


def _stopped(fabric: Fabric, run_dir: Path, result) -> dict[str, Any]:
    status = "failed:nonfinite" if result.stopped == "nonfinite" else result.stopped
    record = {"status": status, "step": result.nonfinite_step or result.state.step, "epoch": result.state.epoch}
    if fabric.is_global_zero:
        runfiles.write_status(run_dir, status, **{k: v for k, v in record.items() if k != "status"})
    return {**record, "global_rank": fabric.global_rank}

