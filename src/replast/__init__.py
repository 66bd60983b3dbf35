"""replast: restore the plasticity of pretrained image classifiers before fine-tuning.

    model, data = replast.load_model_and_data("mobilenetv2_100", "br35h", image_size=128)
    report = replast.restore_plasticity(model, batches, strategy="targeted", utility="taylor", fraction=0.1)

The public API is imported lazily, so `replast --help` does not pay for torch and timm.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "load_model": "replast.models",
    "load_dataset": "replast.data",
    "load_model_and_data": "replast.loading",
    "diagnose": "replast.diagnosis",
    "restore_plasticity": "replast.reinit",
    "finetune": "replast.pipeline",
    "FinetuneConfig": "replast.config",
    "ReinitConfig": "replast.config",
    "TrainConfig": "replast.config",
    "ReplastError": "replast.errors",
}

_MODULES = {"integrations"}  # `replast.integrations.RestorePlasticity` after a plain `import replast`

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    if name in _MODULES:
        return importlib.import_module(f"replast.{name}")
    raise AttributeError(f"module 'replast' has no attribute {name!r}")
