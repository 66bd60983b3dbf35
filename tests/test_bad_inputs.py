"""The bad-input matrix (issue #8): one table, one bad input per row, through the CLI or the Python API.

CLI rows (`replast.cli.main` in-process) must exit 2 with exactly one `replast: error:` line naming the
problem, no traceback, every file that was already there byte-identical and no new file at all (so no
status.json that claims `finished`). API rows must raise the given ReplastError subclass naming the problem
and leave the model and files they were given unchanged. Rows with `error=None` are odd inputs that must
load (4-channel and 16-bit PNGs). Every row's inputs live in its own directory, built before the snapshot.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from replast.checkpoint import load_checkpoint, save_checkpoint
from replast.config import FinetuneConfig
from replast.data import load_dataset
from replast.diagnosis import diagnose
from replast.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ModelError,
    OutputError,
    ReplastError,
    UnknownNameError,
)
from replast.experiment import sweep
from replast.models import load_model
from replast.reinit import restore_plasticity

TINY = ["--model", "mobilenetv2_050", "--weights", "none", "--data", "synthetic", "--image_size", "32",
        "--epochs", "1", "--batch_size", "16"]
KEEP = b"written before the command ran\n"


# ---- a row's world -------------------------------------------------------------------------------
@dataclass
class Workspace:
    """One row's directory: inputs anywhere under `root`, outputs go to `out` (which holds keep.txt)."""

    root: Path
    finished_run: Path
    monkeypatch: pytest.MonkeyPatch
    models: list[tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, bool]]] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def marker(self) -> Path:
        """Appears only if a malicious pickle ran."""
        return self.root / "PWNED"

    def file(self, name: str, content: bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path

    def model(self) -> torch.nn.Module:
        """A small random model whose parameters, buffers and modes are checked after the call."""
        model, _ = load_model("mobilenetv2_050", 2, weights="none")
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        flags = {n: m.training for n, m in model.named_modules()}
        flags |= {f"{n}.requires_grad": p.requires_grad for n, p in model.named_parameters()}
        self.models.append((model, state, flags))
        return model

    def changed_models(self) -> list[str]:
        changed = []
        for model, state, flags in self.models:
            now = model.state_dict()
            changed += [k for k, v in state.items() if not torch.equal(now[k], v)]
            now_flags = {n: m.training for n, m in model.named_modules()}
            now_flags |= {f"{n}.requires_grad": p.requires_grad for n, p in model.named_parameters()}
            changed += [k for k, v in flags.items() if now_flags[k] != v]
        return changed

    def directory(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True)
        return path

    def finished_copy(self) -> Path:
        """The finished tiny run, copied into `out`."""
        shutil.copytree(self.finished_run, self.out, dirs_exist_ok=True)
        return self.out

    def interrupted_copy(self, checkpoint: bytes | None = None) -> Path:
        """The tiny run in `out` as if killed before it finished, optionally with another last.pt."""
        self.finished_copy()
        (self.out / "status.json").write_text(json.dumps({"status": "failed:killed", "updated": "then"}))
        (self.out / "final.json").unlink()
        if checkpoint is not None:
            (self.out / "checkpoints" / "last.pt").write_bytes(checkpoint)
        return self.out


def batches(n: int = 2, size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, size, size, generator=g), torch.tensor([0, 1, 0, 1])) for _ in range(n)]


def png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def image_folder(ws: Workspace, classes: int = 2, per_class: int = 6,
                 extra: dict[str, Callable] | None = None) -> Path:
    """root/c<i>/<j>.png RGB images, plus `extra` {relative path: writer(path)} files."""
    root = ws.root / "images"
    rng = np.random.default_rng(0)
    for c in range(classes):
        for j in range(per_class):
            png(root / f"c{c}" / f"{j}.png", rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    for relative, write in (extra or {}).items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        write(root / relative)
    root.mkdir(parents=True, exist_ok=True)
    return root


def truncated_jpeg(path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def rgba_png(path: Path) -> None:
    png(path, np.random.default_rng(2).integers(0, 256, (24, 24, 4), dtype=np.uint8), "RGBA")


def png_16bit(path: Path) -> None:
    png(path, np.random.default_rng(3).integers(0, 65536, (24, 24), dtype=np.uint16))
    assert Image.open(path).mode.startswith("I;16")


def not_an_image(path: Path) -> None:
    path.write_bytes(b"this is not a JPEG")


def state_dict_bytes(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def foreign_weights(ws: Workspace) -> Path:
    """Weights of mobilenetv2_035: other widths than the mobilenetv2_050 every row builds."""
    model, _ = load_model("mobilenetv2_035", 2, weights="none")
    return ws.file("mnv2_035.pth", state_dict_bytes(model.state_dict()))


class CreatesMarker:
    """Unpickling this calls open(marker, "w"), which creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def malicious_checkpoint(ws: Workspace) -> bytes:
    return state_dict_bytes({"model": CreatesMarker(ws.marker), "optimizer": {}})


def garbage(n: int = 4096) -> bytes:
    return np.random.default_rng(4).integers(0, 256, n, dtype=np.uint8).tobytes()


def truncated_checkpoint(ws: Workspace) -> bytes:
    data = (ws.finished_run / "checkpoints" / "last.pt").read_bytes()
    return data[: len(data) // 2]


def study(ws: Workspace, text: str) -> Path:
    return ws.file("study.yaml", text.encode())


def disk_full_during_save(ws: Workspace) -> Callable[[], Any]:
    """The second save of a checkpoint runs out of space at fsync; the first must survive it."""
    path = ws.root / "ckpt" / "last.pt"
    save_checkpoint(path, {"w": torch.arange(4.0), "step": 1})

    def full(fd: int) -> None:
        raise OSError(28, os.strerror(28))

    def call() -> None:
        with ws.monkeypatch.context() as patch:
            patch.setattr(os, "fsync", full)
            save_checkpoint(path, {"w": torch.zeros(4), "step": 2})

    return call


def previous_checkpoint_intact(ws: Workspace) -> None:
    state = load_checkpoint(ws.root / "ckpt" / "last.pt")
    assert state["step"] == 1 and torch.equal(state["w"], torch.arange(4.0))


# ---- the table -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    id: str
    kind: str  # "cli": make(ws) returns argv; "api": make(ws) returns a zero-argument call
    make: Callable[[Workspace], Any]
    error: type[Exception] | None
    """The expected error (CLI rows: any ReplastError turned into exit code 2); None = must succeed."""
    fragments: tuple[str, ...] = ()
    check: Callable[..., None] | None = None
    """Extra assertions: check(ws) after an error, check(ws, result) after a success."""


def cli_row(id: str, make: Callable[[Workspace], list], *fragments: str, check=None) -> Row:
    return Row(id, "cli", make, ReplastError, fragments, check)


def api_row(id: str, make: Callable[[Workspace], Callable], error: type[Exception] | None, *fragments: str,
            check=None) -> Row:
    return Row(id, "api", make, error, fragments, check)


def finetune(ws: Workspace, *extra: Any) -> list:
    return ["finetune", *TINY, "--out", ws.out, *extra]


def reinit_cli(*extra: Any) -> list:
    return ["reinit", "--model", "mobilenetv2_050", "--weights", "none", "--data", "synthetic", "--image_size",
            "32", "--batch_size", "8", "--reinit.batches", "1", *extra]


def resume(ws: Workspace, checkpoint: bytes | None = None, *extra: Any) -> list:
    ws.interrupted_copy(checkpoint)
    return finetune(ws, "--resume", "true", *extra)


def targeted(**option: str) -> list[str]:
    key, value = next(iter(option.items()))
    return ["--reinit.strategy", "targeted", f"--reinit.{key}", value]


def weights_cli(content: Callable[[Workspace], bytes], name: str = "w.pth") -> Callable[[Workspace], list]:
    return lambda ws: finetune(ws, "--weights", ws.file(name, content(ws)))


def preprocessing():
    return load_model("mobilenetv2_050", 2, weights="none")[1]


def reinit_call(data: list | None = None, **options: Any) -> Callable[[Workspace], Callable]:
    return lambda ws: partial(restore_plasticity, ws.model(), batches() if data is None else data, **options)


def diagnose_call(data: Callable[[], list]) -> Callable[[Workspace], Callable]:
    return lambda ws: partial(diagnose, ws.model(), data(), num_batches=2)


def dataset_call(folder: Callable[[Workspace], Path], **options: Any) -> Callable[[Workspace], Callable]:
    return lambda ws: partial(load_dataset, f"imagefolder:{folder(ws)}", preprocessing(), image_size=32,
                              cache_dir=ws.root.parent / "cache", **options)


def study_call(text: str) -> Callable[[Workspace], Callable]:
    return lambda ws: partial(sweep, study(ws, text), out=ws.out)


def weights_call(make_file: Callable[[Workspace], Path]) -> Callable[[Workspace], Callable]:
    return lambda ws: partial(load_model, "mobilenetv2_050", 2, make_file(ws))


def checkpoint_call(content: Callable[[Workspace], bytes]) -> Callable[[Workspace], Callable]:
    return lambda ws: partial(load_checkpoint, ws.file("ckpt.pt", content(ws)))


def loads_every_image(expected: int) -> Callable[[Workspace, Any], None]:
    def check(ws: Workspace, data) -> None:
        record = data.record()
        assert record["num_bad"] == 0 and record["num_images"] == expected, record["bad_images"]
        assert data.num_classes == 2

    return check


def marker_absent(ws: Workspace) -> None:
    assert not ws.marker.exists(), "unpickling the checkpoint ran code"


def folder_cli(extra: dict[str, Callable] | None = None, classes: int = 2, *options: str) -> Callable:
    return lambda ws: finetune(ws, "--data", f"imagefolder:{image_folder(ws, classes, extra=extra)}", *options)


def config_cli(text: str, name: str = "run.yaml") -> Callable[[Workspace], list]:
    return lambda ws: ["finetune", "--config", ws.file(name, text.encode()), "--out", ws.out]


def sweep_cli(text: str) -> Callable[[Workspace], list]:
    return lambda ws: ["sweep", "--config", study(ws, text), "--out", ws.out]


def in_out(make_argv: Callable[[Workspace], list]) -> Callable[[Workspace], list]:
    """Run from `out`, so that a command writing into the current directory shows up as created files."""
    def make(ws: Workspace) -> list:
        argv = make_argv(ws)
        ws.monkeypatch.chdir(ws.out)
        return argv
    return make


def results_folder(ws: Workspace, text: str = "hash,status\nabc,finished\n") -> Path:
    """A folder holding only results.csv, as `replast merge` writes one."""
    return ws.file("results/results.csv", text.encode()).parent


TINY_STUDY = "name: s\nbase: {model: mobilenetv2_050, weights: none, data: synthetic}\ngrid: {seed: [0]}\n"
FOUR_BAD = {f"c{c}/bad{i}.jpg": not_an_image for c in (0, 1) for i in (0, 1)}

CLI_ROWS = [
    cli_row("unknown model", lambda ws: finetune(ws, "--model", "mobilenetv2_05"),
            "unknown model 'mobilenetv2_05'", "did you mean", "mobilenetv2_050"),
    cli_row("unknown dataset", lambda ws: finetune(ws, "--data", "synthetc"), "unknown dataset",
            "did you mean 'synthetic'"),
    cli_row("unknown strategy", lambda ws: finetune(ws, "--reinit.strategy", "targetted"), "unknown strategy",
            "did you mean 'targeted'"),
    cli_row("unknown utility", lambda ws: finetune(ws, *targeted(utility="taylr")), "unknown utility", "'taylor'"),
    cli_row("unknown scheme", lambda ws: finetune(ws, *targeted(scheme="zeros")), "unknown scheme", "'zero'"),
    cli_row("unknown selection", lambda ws: finetune(ws, *targeted(selection="per_layer")), "unknown selection",
            "'per-layer'"),
    cli_row("missing weight file", lambda ws: finetune(ws, "--weights", ws.root / "nope.pth"), "nope.pth",
            "not found"),
    cli_row("unreadable weight file (a directory: root ignores chmod)",
            lambda ws: finetune(ws, "--weights", ws.directory("w.pth")), "w.pth", "not a file"),
    cli_row("garbage .pth", weights_cli(lambda ws: garbage()), "w.pth", "not a readable weight file"),
    cli_row("garbage .safetensors", weights_cli(lambda ws: garbage(), "w.safetensors"), "w.safetensors",
            "not a readable weight file"),
    cli_row("zero-byte weight file", weights_cli(lambda ws: b""), "w.pth", "not a readable weight file"),
    cli_row("malicious pickle weight file", weights_cli(malicious_checkpoint), "w.pth", "unsafe",
            check=marker_absent),
    cli_row("weights of another architecture", lambda ws: finetune(ws, "--weights", foreign_weights(ws)),
            "mnv2_035.pth", "another architecture"),
    cli_row("imagefolder missing", lambda ws: finetune(ws, "--data", f"imagefolder:{ws.root / 'nope'}"), "nope",
            "does not exist"),
    cli_row("imagefolder empty", folder_cli(classes=0), "0 class directories"),
    cli_row("imagefolder with one class", folder_cli(classes=1), "1 class directory", "at least 2"),
    cli_row("corrupt images above --max_bad_fraction", folder_cli(FOUR_BAD, 2, "--max_bad_fraction", "0.1"),
            "4 of 16 images", "max_bad_fraction 0.1"),
    cli_row("truncated JPEG", folder_cli({"c0/t.jpg": truncated_jpeg}), "c0/t.jpg", "truncated"),
    cli_row("epochs 0", lambda ws: finetune(ws, "--epochs", "0"), "epochs=0"),
    cli_row("epochs negative", lambda ws: finetune(ws, "--epochs", "-3"), "epochs=-3"),
    cli_row("batch size 0", lambda ws: finetune(ws, "--batch_size", "0"), "batch_size=0"),
    cli_row("precise_bn negative", lambda ws: finetune(ws, "--train.precise_bn", "-1"), "train.precise_bn",
            ">= 0"),
    cli_row("recompute_bn not a yes/no", lambda ws: finetune(ws, "--reinit.recompute_bn", "maybe"),
            "recompute_bn"),
    cli_row("fraction above 1", lambda ws: finetune(ws, "--reinit.fraction", "1.5"), "reinit.fraction=1.5"),
    cli_row("fraction below 0", lambda ws: finetune(ws, "--reinit.fraction", "-0.1"), "reinit.fraction=-0.1"),
    cli_row("threshold below 0", lambda ws: finetune(ws, "--reinit.threshold", "-1"), "reinit.threshold=-1"),
    cli_row("layers above the number of blocks",
            lambda ws: finetune(ws, "--reinit.strategy", "reinit-top-layers", "--reinit.layers", "99"),
            "layers=99", "blocks"),
    cli_row("malformed YAML --config", config_cli("model: [unclosed\n", "bad.yaml"), "bad.yaml", "not valid YAML"),
    cli_row("YAML --config that is not a mapping", config_cli("- a\n", "list.yaml"), "list.yaml", "not a mapping"),
    cli_row("empty YAML --config", config_cli("# nothing\n", "empty.yaml"), "empty.yaml", "is empty"),
    cli_row("missing --config file", lambda ws: ["finetune", "--config", ws.root / "nope.yaml"], "nope.yaml",
            "does not exist"),
    cli_row("unknown key in YAML --config", config_cli("model: mobilenetv2_050\nepohcs: 1\n"), "epohcs"),
    cli_row("study file with an unknown key", sweep_cli("name: s\ngird: {seed: [0]}\n"),
            "unknown study key 'gird'", "did you mean 'grid'"),
    cli_row("study file with an empty grid", sweep_cli("name: s\ngrid: {}\n"), "has no runs"),
    cli_row("study grid with an unknown config key", sweep_cli("name: s\ngrid: {sed: [0, 1]}\n"),
            "unknown key 'sed'", "did you mean 'seed'"),
    cli_row("study grid value of the wrong type", sweep_cli("name: s\ngrid: {epochs: [abc]}\n"),
            'grid: Parser key "epochs"', "Expected a <class 'int'>. Got value: abc"),
    cli_row("study base value of the wrong type", sweep_cli("name: s\nbase: {epochs: 2.5}\ngrid: {seed: [0]}\n"),
            'base: Parser key "epochs"', "Got value: 2.5"),
    cli_row("study grid value outside a Literal", sweep_cli("name: s\ngrid: {train.mode: [linearprobe]}\n"),
            'Parser key "train.mode"', "'finetune', 'linear-probe'", "Got value: linearprobe"),
    cli_row("truncated checkpoint on --resume", lambda ws: resume(ws, truncated_checkpoint(ws)), "last.pt",
            "truncated or corrupt"),
    cli_row("checkpoint of another architecture on --resume",
            lambda ws: resume(ws, None, "--model", "mobilenetv2_035"), "last.pt", "does not match"),
    cli_row("malicious pickle checkpoint on --resume", lambda ws: resume(ws, malicious_checkpoint(ws)),
            "refusing to load", "last.pt", check=marker_absent),
    cli_row("--out holding a finished run, without --overwrite",
            lambda ws: ["finetune", *TINY, "--out", ws.finished_copy()], "already holds a finished run",
            "--overwrite"),
    cli_row("finetune --out below a regular file",
            lambda ws: ["finetune", *TINY, "--out", ws.out / "keep.txt" / "run"], "keep.txt", "not writable"),
    cli_row("reinit --out below a regular file",
            lambda ws: reinit_cli("--out", ws.out / "keep.txt" / "r.safetensors"), "keep.txt", "not writable"),
    cli_row("diagnose --out below a regular file",
            lambda ws: ["diagnose", *TINY[:8], "--batches", "1", "--out", ws.out / "keep.txt" / "d"], "keep.txt",
            "not writable"),
    cli_row("reinit --out x.pt (not .safetensors)", lambda ws: reinit_cli("--out", ws.out / "x.pt"), "x.pt",
            ".safetensors"),
    cli_row("reinit --out over an existing file, without --overwrite",
            lambda ws: reinit_cli("--out", ws.file("out/r.safetensors", KEEP)), "r.safetensors", "--overwrite"),
    cli_row("diagnose with an unknown model", lambda ws: ["diagnose", "--model", "mobilenet_v9", "--out", ws.out],
            "unknown model 'mobilenet_v9'"),
    cli_row("momentum negative", lambda ws: finetune(ws, "--train.momentum", "-1"), "train.momentum=-1"),
    cli_row("momentum 0 with Nesterov SGD (the default)", lambda ws: finetune(ws, "--train.momentum", "0"),
            "train.momentum=0", "--train.nesterov false"),
    cli_row("eval_batch_size 0", lambda ws: finetune(ws, "--train.eval_batch_size", "0"),
            "train.eval_batch_size=0"),
    cli_row("eval_batch_size negative", lambda ws: finetune(ws, "--train.eval_batch_size", "-5"),
            "train.eval_batch_size=-5"),
    cli_row("training split smaller than one batch", lambda ws: finetune(ws, "--train_fraction", "0.01"),
            "training split has 2 images", "fewer than one batch of 16", "--batch_size"),
    cli_row("include patterns that match no module",
            lambda ws: finetune(ws, "--reinit.strategy", "targeted", "--reinit.include", "[nothing]"),
            "include patterns ['nothing'] match no module"),
    *([] if torch.backends.mps.is_available() else [
        cli_row("--accelerator mps without MPS", lambda ws: finetune(ws, "--accelerator", "mps"),
                "--accelerator mps", "not available")]),
    cli_row("finetune --out empty", in_out(lambda ws: ["finetune", *TINY, "--out", ""]), "out is empty"),
    cli_row("diagnose --out empty", in_out(lambda ws: ["diagnose", *TINY[:8], "--batches", "1", "--out", ""]),
            "--out is empty"),
    cli_row("diagnose --out an existing regular file",
            lambda ws: ["diagnose", *TINY[:8], "--batches", "1", "--out", ws.out / "keep.txt"], "keep.txt",
            "is a file"),
    cli_row("weight_decay NaN from a YAML --config (.nan)",
            lambda ws: finetune(ws, "--config", ws.file("wd.yaml", b"train:\n  weight_decay: .nan\n")),
            "train.weight_decay=nan", "finite"),
    cli_row("warmup_epochs NaN from a YAML --config (.nan)",
            lambda ws: finetune(ws, "--config", ws.file("wu.yaml", b"train:\n  warmup_epochs: .nan\n")),
            "train.warmup_epochs=nan", "finite"),
    cli_row("warmup_epochs infinite from a YAML --config (.inf)",
            lambda ws: finetune(ws, "--config", ws.file("wu.yaml", b"train:\n  warmup_epochs: .inf\n")),
            "train.warmup_epochs=inf", "finite"),
    cli_row("learning rate infinite from a YAML --config (.inf)",
            lambda ws: finetune(ws, "--config", ws.file("lr.yaml", b"train:\n  lr: .inf\n")), "train.lr=inf",
            "finite"),
    cli_row("finetune seed negative", lambda ws: finetune(ws, "--seed", "-1"), "seed=-1", "4294967295"),
    cli_row("finetune seed above numpy's range", lambda ws: finetune(ws, "--seed", str(2**32)), "seed=4294967296"),
    cli_row("study grid seed negative", sweep_cli("name: s\nbase: {data: synthetic}\ngrid: {seed: [0, -2]}\n"),
            "seed=-2"),
    cli_row("diagnose seed negative",
            lambda ws: ["diagnose", *TINY[:8], "--batches", "1", "--seed", "-1", "--out", ws.out / "d"], "seed=-1"),
    cli_row("reinit seed negative", lambda ws: reinit_cli("--seed", "-1", "--out", ws.out / "r.safetensors"),
            "seed=-1"),
    cli_row("diagnose --batches negative",
            lambda ws: ["diagnose", *TINY[:8], "--batches", "-1", "--out", ws.out / "d"], "batches=-1"),
    cli_row("reinit --reinit.batches negative",
            lambda ws: reinit_cli("--reinit.batches", "-1", "--out", ws.out / "r.safetensors"), "reinit.batches"),
    cli_row("reinit --config whose reinit section is not a mapping",
            lambda ws: [*reinit_cli("--config", ws.file("r.yaml", b"reinit: 3\n")), "--out",
                        ws.out / "r.safetensors"], "reinit must be a mapping"),
    *[cli_row(f"reinit --reinit.{key} (a training-time option)",
              lambda ws, key=key, value=value: reinit_cli(f"--reinit.{key}", value, "--out", ws.out / "r.safetensors"),
              f"reinit.{key}", "replast finetune", "callback")
      for key, value in (("lr_scale", "3"), ("lr_warmup_steps", "10"), ("schedule", "every:5"))],
    *[cli_row(f"sweep --launcher slurm --{key} {value}",
              lambda ws, key=key, value=value: [*sweep_cli(TINY_STUDY)(ws), "--launcher", "slurm", "--cluster",
                                                "debug", f"--{key}", value], f"{key}={value}")
      for key, value in (("time_min", "0"), ("time_min", "-5"), ("cpus_per_task", "0"), ("cpus_per_task", "-1"),
                         ("gpus_per_node", "-1"))],
    cli_row("sweep --jobs 0", lambda ws: [*sweep_cli(TINY_STUDY)(ws), "--jobs", "0"], "jobs=0"),
    cli_row("sweep --out a regular file",
            lambda ws: ["sweep", "--config", study(ws, TINY_STUDY), "--out", ws.out / "keep.txt"], "keep.txt",
            "is a file"),
    cli_row("sweep --out below a regular file",
            lambda ws: ["sweep", "--config", study(ws, TINY_STUDY), "--out", ws.out / "keep.txt" / "s"],
            "keep.txt", "not writable"),
    cli_row("demo --jobs 0", lambda ws: ["demo", "--jobs", "0", "--out", ws.out / "demo"], "jobs=0"),
    cli_row("merge INTO a regular file", lambda ws: ["merge", results_folder(ws), ws.out / "keep.txt"],
            "INTO", "keep.txt", "is a file"),
    cli_row("merge INTO below a regular file",
            lambda ws: ["merge", results_folder(ws), ws.out / "keep.txt" / "docs"], "keep.txt", "not writable"),
    cli_row("merge INTO empty", in_out(lambda ws: ["merge", results_folder(ws), ""]), "INTO is empty"),
    cli_row("report on a results.csv without a status column",
            lambda ws: ["report", results_folder(ws, "hash,acc\na,1\n")], "results.csv", "no status column"),
    cli_row("report on a results.csv of finished runs without a seed column",
            lambda ws: ["report", results_folder(ws, "hash,status,test_acc\na,finished,0.5\n")], "results.csv",
            "no seed column"),
    cli_row("report on a malformed results.csv (an unclosed quote)",
            lambda ws: ["report", results_folder(ws, 'hash,status\n"a,finished\n')], "results.csv",
            "not a readable CSV table"),
]

def folder_call(extra: dict[str, Callable] | None = None, classes: int = 2, **options: Any) -> Callable:
    return dataset_call(lambda ws: image_folder(ws, classes, extra=extra), **options)


def batches_with(change: Callable[[torch.Tensor, torch.Tensor], Any]) -> list:
    return [change(x, y) for x, y in batches()]


API_ROWS = [
    api_row("load_model: unknown name", lambda ws: partial(load_model, "mobilenetv2_05", 2, weights="none"),
            UnknownNameError, "unknown model", "mobilenetv2_050"),
    api_row("load_model: missing weight file", weights_call(lambda ws: ws.root / "no.pth"), ModelError, "no.pth",
            "not found"),
    api_row("load_model: unreadable weight file (a directory)", weights_call(lambda ws: ws.directory("w.pth")),
            ModelError, "not a file"),
    api_row("load_model: garbage weight file", weights_call(lambda ws: ws.file("w.pth", garbage())), ModelError,
            "w.pth", "not a readable weight file"),
    api_row("load_model: zero-byte weight file", weights_call(lambda ws: ws.file("w.pth", b"")), ModelError,
            "not a readable weight file"),
    api_row("load_model: malicious pickle weight file",
            weights_call(lambda ws: ws.file("w.pth", malicious_checkpoint(ws))), ModelError, "unsafe",
            check=marker_absent),
    api_row("load_model: weights of another architecture", weights_call(foreign_weights), ModelError,
            "another architecture"),
    api_row("load_dataset: unknown name", lambda ws: partial(load_dataset, "fashion_mnst", preprocessing()),
            UnknownNameError, "did you mean 'fashion-mnist'"),
    api_row("load_dataset: imagefolder missing", dataset_call(lambda ws: ws.root / "none"), DataError,
            "does not exist"),
    api_row("load_dataset: imagefolder with one class", folder_call(classes=1), DataError, "1 class directory"),
    api_row("load_dataset: class directory without images", folder_call({"c2/readme.txt": not_an_image}),
            DataError, "c2", "holds no images"),
    api_row("load_dataset: corrupt images above max_bad_fraction",
            folder_call({"c1/x.jpg": not_an_image, "c0/y.png": not_an_image}, max_bad_fraction=0.1), DataError,
            "2 of 14 images", "max_bad_fraction 0.1"),
    api_row("load_dataset: truncated JPEG", folder_call({"c1/t.jpg": truncated_jpeg}), DataError, "c1/t.jpg",
            "truncated"),
    api_row("load_dataset: 4-channel PNG loads", folder_call({"c0/rgba.png": rgba_png}), None,
            check=loads_every_image(13)),
    api_row("load_dataset: 16-bit PNG loads", folder_call({"c1/deep.png": png_16bit}), None,
            check=loads_every_image(13)),
    api_row("restore_plasticity: unknown strategy", reinit_call(strategy="targetted"), UnknownNameError,
            "did you mean 'targeted'"),
    api_row("restore_plasticity: unknown utility", reinit_call(utility="taylr"), UnknownNameError, "'taylor'"),
    api_row("restore_plasticity: unknown selection", reinit_call(selection="globl"), UnknownNameError, "'global'"),
    api_row("restore_plasticity: unknown scheme", reinit_call(scheme="orthogonl"), UnknownNameError,
            "'orthogonal'"),
    api_row("restore_plasticity: fraction above 1", reinit_call(fraction=1.5), ConfigError, "fraction=1.5"),
    api_row("restore_plasticity: threshold below 0", reinit_call(selection="threshold", threshold=-0.5),
            ConfigError, "threshold=-0.5"),
    api_row("restore_plasticity: layers above the number of blocks",
            reinit_call(strategy="reinit-top-layers", layers=99), ConfigError, "layers=99", "blocks"),
    api_row("restore_plasticity: unknown option", reinit_call(fracton=0.2), ConfigError, "'fracton'",
            "'fraction'"),
    api_row("restore_plasticity: 1-channel images", reinit_call(batches_with(lambda x, y: (x[:, :1], y))),
            ConfigError, "does not fit the model"),
    api_row("restore_plasticity: 1-channel images, no utility pass",
            reinit_call(batches_with(lambda x, y: (x[:, :1], y)), utility="magnitude"), ConfigError,
            "does not fit the model"),
    api_row("restore_plasticity: uint8 images", reinit_call(batches_with(lambda x, y: (x.to(torch.uint8), y))),
            ConfigError, "uint8"),
    api_row("restore_plasticity: labels beyond the head", reinit_call(batches_with(lambda x, y: (x, y + 5))),
            ConfigError, "2 classes"),
    api_row("restore_plasticity: batches that are not (x, y)", reinit_call(batches_with(lambda x, y: x)),
            ConfigError, "(x, y)"),
    api_row("restore_plasticity: fraction that is not a number", reinit_call(fraction="a lot"), ConfigError,
            "fraction"),
    api_row("load_checkpoint: missing", lambda ws: partial(load_checkpoint, ws.root / "none.pt"), CheckpointError,
            "does not exist"),
    api_row("load_checkpoint: zero-byte", checkpoint_call(lambda ws: b""), CheckpointError, "truncated or corrupt"),
    api_row("load_checkpoint: truncated", checkpoint_call(truncated_checkpoint), CheckpointError,
            "truncated or corrupt"),
    api_row("load_checkpoint: malicious pickle", checkpoint_call(malicious_checkpoint), CheckpointError,
            "refusing to load", check=marker_absent),
    api_row("load_checkpoint: not a dict", checkpoint_call(lambda ws: state_dict_bytes([1, 2])), CheckpointError,
            "does not hold a state dict"),
    api_row("save_checkpoint: disk full keeps the previous checkpoint", disk_full_during_save, OutputError,
            "last.pt", "No space left", check=previous_checkpoint_intact),
    api_row("sweep: study file with an unknown key", study_call("name: s\nbse: {}\ngrid: {seed: [0]}\n"),
            ConfigError, "unknown study key 'bse'", "'base'"),
    api_row("sweep: study with an empty grid", study_call("name: s\ngrid: {}\nruns: []\n"), ConfigError,
            "has no runs"),
    api_row("sweep: invalid value in the grid", study_call("name: s\ngrid: {epochs: [1, 0]}\n"), ConfigError,
            "epochs=0"),
    api_row("FinetuneConfig.from_dict: unknown key", lambda ws: partial(FinetuneConfig.from_dict, {"modle": "x"}),
            ConfigError, "'modle'", "did you mean 'model'"),
    api_row("FinetuneConfig.from_dict: unknown nested key",
            lambda ws: partial(FinetuneConfig.from_dict, {"reinit": {"schme": "zero"}}), ConfigError,
            "'reinit.schme'", "'reinit.scheme'"),
    api_row("FinetuneConfig.from_dict: section that is not a mapping",
            lambda ws: partial(FinetuneConfig.from_dict, {"train": 3}), ConfigError, "train must be a mapping"),
    *[api_row(f"FinetuneConfig.from_dict: section {key}: {value!r} (falsy, not a mapping)",
              lambda ws, key=key, value=value: partial(FinetuneConfig.from_dict, {key: value}), ConfigError,
              f"{key} must be a mapping")
      for key, value in (("reinit", 0), ("train", False), ("train", []), ("reinit", ""))],
    api_row("diagnose: no batches", diagnose_call(list), ConfigError, "no batches"),
    api_row("diagnose: uint8 images", diagnose_call(lambda: batches_with(lambda x, y: (x.to(torch.uint8), y))),
            ConfigError, "uint8"),
    api_row("diagnose: labels beyond the head", diagnose_call(lambda: batches_with(lambda x, y: (x, y + 5))),
            ConfigError, "2 classes"),
    api_row("diagnose: 1-channel images", diagnose_call(lambda: batches_with(lambda x, y: (x[:, :1], y))),
            ConfigError, "does not fit the model"),
]

ROWS = CLI_ROWS + API_ROWS


# ---- running a row -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One real tiny fine-tune (a few seconds): its checkpoint and files seed the resume and --out rows."""
    from replast.cli import main

    out = tmp_path_factory.mktemp("finished") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REPLAST_CACHE", str(tmp_path_factory.mktemp("cache")))
        assert main(["finetune", *TINY, "--out", str(out)]) == 0
    assert json.loads((out / "status.json").read_text())["status"] == "finished"
    return out


@pytest.fixture
def ws(tmp_path, finished_run, monkeypatch) -> Workspace:
    monkeypatch.setenv("REPLAST_CACHE", str(tmp_path / "cache"))
    workspace = Workspace(tmp_path / "ws", finished_run, monkeypatch)
    workspace.out.mkdir(parents=True)
    (workspace.out / "keep.txt").write_bytes(KEEP)
    return workspace


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_untouched(before: dict[str, bytes], after: dict[str, bytes]) -> None:
    changed = [name for name, data in before.items() if after.get(name) != data]
    assert not changed, f"files changed or removed: {changed}"
    claims = [n for n in after if n.endswith("status.json") and after[n] != before.get(n)
              and json.loads(after[n]).get("status") == "finished"]
    assert not claims, f"status.json claiming finished created: {claims}"
    assert set(after) == set(before), f"files created: {sorted(set(after) - set(before))}"


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.kind}: {r.id}" for r in ROWS])
def test_bad_input(row: Row, ws: Workspace, cli) -> None:
    action = row.make(ws)
    before = snapshot(ws.root)
    if row.kind == "cli":
        code, out, err = cli(*action)
        lines = err.strip().splitlines()
        assert "Traceback" not in err + out, err
        assert code == 2, err
        assert len(lines) == 1 and lines[0].startswith("replast: error:"), err
        assert lines[0].isprintable(), f"control characters in {lines[0]!r}"
        message = lines[0]
    elif row.error is None:
        result = action()
        row.check(ws, result)
        message = ""
    else:
        with pytest.raises(row.error) as info:
            action()
        message = str(info.value)
        assert len(message.splitlines()) == 1, message
        assert message.isprintable(), f"control characters in {message!r}"
    for fragment in row.fragments:
        assert fragment.lower() in message.lower(), f"{fragment!r} not in {message!r}"
    if row.error is not None and row.check is not None:
        row.check(ws)
    assert not ws.marker.exists()
    assert not ws.changed_models(), "the model given was modified"
    assert_untouched(before, snapshot(ws.root))


def test_the_matrix_has_at_least_30_distinct_rows_of_both_kinds() -> None:
    assert len(ROWS) >= 30 and len({r.id for r in ROWS}) == len(ROWS)
    assert {r.kind for r in ROWS} == {"cli", "api"}
