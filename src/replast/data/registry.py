"""Dataset registry: `@register_dataset(name)` on a Source class; `resolve_source` also parses `imagefolder:PATH`.

    from replast.data import list_datasets; list_datasets()   # what `replast datasets` prints
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from replast.data.base import Source
from replast.errors import DataError
from replast.registry import Registry

DATASETS: Registry[Callable[..., Source]] = Registry("dataset")

PREFIX_ARG = "PATH"
"""Prefix forms are registered as e.g. "imagefolder:PATH" and resolved from "imagefolder:<path>"."""


def register_dataset(name: str, help: str = "") -> Callable[[Any], Any]:
    """Class decorator: `@register_dataset("mnist")`, or "prefix:PATH" for a source built from an argument."""
    return DATASETS.register(name, help)


def resolve_source(name: str) -> Source:
    """The Source for a registered name or a "prefix:argument" form; unknown names list close matches."""
    prefix, sep, arg = str(name).partition(":")
    if sep and f"{prefix}:{PREFIX_ARG}" in DATASETS:
        if not arg:
            raise DataError(f"dataset {name!r} lacks a path: write {prefix}:/path/to/root")
        return DATASETS.get(f"{prefix}:{PREFIX_ARG}")(arg)
    return DATASETS.get(name)()


def list_datasets() -> list[dict[str, Any]]:
    """One row per registered dataset, all with the same keys: name, description, images, classes,
    stored size, official split, whether its files are here, and where."""
    return [_row(name) for name in DATASETS.names()]


def _row(name: str) -> dict[str, Any]:
    row: dict[str, Any] = {"name": name, "description": DATASETS.help(name), "num_images": None,
                           "num_classes": None, "stored_size": "image size", "official_split": False,
                           "available": True, "location": "(your folder)"}
    if name.endswith(f":{PREFIX_ARG}"):
        return row
    try:
        source = DATASETS.get(name)()
    except DataError as e:
        return row | {"available": False, "location": str(e)}
    available, location = source.available(), source.location()
    if not available:
        from replast.data.cache import sizes_usable_without_source  # cache imports the sources: import late

        if sizes := sizes_usable_without_source(source):
            location = f"not installed; runs from its verified cache at {', '.join(map(str, sizes))} px"
    return row | {
        "description": source.description or row["description"], "num_images": source.num_images,
        "num_classes": source.num_classes, "stored_size": source.native_size or "image size",
        "official_split": source.official_split, "available": available, "location": location,
    }
