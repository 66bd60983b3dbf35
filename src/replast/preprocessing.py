"""What a model expects of its input; returned by `load_model` so the data pipeline follows the model."""

from __future__ import annotations

from dataclasses import asdict, dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Normalization and input geometry of a model (square inputs)."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int = 224
    """Native input side in pixels; a run may train at another size (`--image-size`)."""
    interpolation: str = "bilinear"
    patch_size: int | None = None
    """Side of a ViT patch; input sizes must be multiples of it. None for CNNs."""

    def with_size(self, size: int) -> Preprocessing:
        return Preprocessing(self.mean, self.std, size, self.interpolation, self.patch_size)

    def to_dict(self) -> dict:
        return asdict(self)
