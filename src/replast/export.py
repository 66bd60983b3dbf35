"""`replast reinit`: re-initialize a model on the user's data and save it for any training script.

Writes OUT (.safetensors: the state dict, with model name, classes and options in its metadata) and the
ReinitReport beside it (OUT with the suffix .json), both atomically and together: neither is replaced unless
both were written, and neither if one exists, unless --overwrite.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save

from replast.checkpoint import atomic_write_all
from replast.config import ReinitConfig
from replast.errors import ConfigError, OutputError
from replast.loading import first_batches, load_model_and_data
from replast.reinit import restore_plasticity
from replast.runfiles import check_creatable


def export_reinitialized(*, model: str, data: str, out: str, weights: str, batch_size: int,
                         image_size: int | None, max_samples: int | None, seed: int, overwrite: bool,
                         reinit: ReinitConfig, console) -> int:
    path = Path(out)
    if path.suffix != ".safetensors":
        raise ConfigError(f"--out {out}: the output must be a .safetensors file")
    report_path = path.with_suffix(".json")
    try:
        existing = [p for p in (path, report_path) if p.exists()]
    except OSError as e:
        raise OutputError(f"--out {out}: {e.strerror}; choose another path") from e
    # Both files before the --overwrite question (which cannot help a directory), and before any work: a
    # directory at the report's path would fail its write after the model file was already replaced.
    check_creatable(path)
    check_creatable(report_path, option="the report beside --out,")
    if existing and not overwrite:
        raise OutputError(f"{existing[0]} exists; choose another --out or pass --overwrite")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net, splits = load_model_and_data(model, data, weights=weights, device=device, image_size=image_size,
                                      seed=seed, max_samples=max_samples)
    batches = first_batches(splits, "train", batch_size, reinit.batches, seed=seed)
    options = asdict(reinit)
    if reinit.scope == "auto":  # as finetune does: the layers more saturated on the data than on photos
        from replast.autoscope import choose_against_photos

        options["scope"] = choose_against_photos(net, batches, splits, batch_size, seed).fractions
    report = restore_plasticity(net, batches, seed=seed, **options)
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    metadata = {"model": model, "classes": json.dumps(splits.classes), "reinit": json.dumps(asdict(reinit)),
                "seed": str(seed), "format": "replast-state-dict"}
    payload, report_text = save(state, metadata=metadata), report.to_json().encode()
    # Both written before either replaces a file, the model renamed last: a failure leaves the earlier pair
    # (or nothing), never a model beside a report that does not describe it.
    atomic_write_all({report_path: lambda f: f.write(report_text), path: lambda f: f.write(payload)})
    console.print(f"re-initialized {report.n_reset} of {report.numel} eligible weights "
                  f"({report.n_reset / max(report.numel, 1):.2%}) in {report.total_time_s:.2f} s; wrote {path}")
    return 0
