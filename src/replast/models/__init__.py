"""Models: one factory for the offline zoo and any timm/torchvision architecture, plus head utilities.

    from replast.models import load_model
    model, preprocessing = load_model("mobilenetv2_100", num_classes=2)   # weights="pretrained"
"""

from replast.models import zoo as _zoo  # noqa: F401  (registers the zoo builders)
from replast.models.heads import classifier_name, classifier_names, head_classes, model_family, replace_head
from replast.models.registry import (
    MODELS,
    Built,
    ZooModel,
    build_model,
    list_models,
    load_model,
    register_model,
)

__all__ = [
    "MODELS", "Built", "ZooModel", "build_model", "classifier_name", "classifier_names", "head_classes", "list_models",
    "load_model", "model_family", "register_model", "replace_head",
]
