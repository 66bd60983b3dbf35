"""`replast bench`: the three pipelines side by side on the same image files, its JSON, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def image_folder(tmp_path):
    """Three classes of 40×48 JPEGs (an odd class count, so the head is sized from the folder)."""
    rng = np.random.default_rng(0)
    for c in range(3):
        (tmp_path / "imgs" / f"c{c}").mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / f"c{c}" / f"{i}.jpg")
    return tmp_path / "imgs"


def test_bench_writes_the_three_rates_and_their_ratios(cli, image_folder, tmp_path):
    out = tmp_path / "bench.json"
    code, stdout, _ = cli("bench", "--models", "[mobilenetv2_050]", "--sizes", "[32]", "--batch_size", "4",
                          "--steps", "2", "--data", f"imagefolder:{image_folder}", "--weights", "none",
                          "--out", out)
    assert code == 0, stdout
    record = json.loads(out.read_text())
    assert record["data"] == f"imagefolder:{image_folder}" and record["weights"] == "none"
    assert record["device"].startswith("cpu-") and "--data imagefolder:" in record["command"]
    (row,) = record["results"]
    assert (row["model"], row["image_size"], row["batch_size"], row["steps"]) == ("mobilenetv2_050", 32, 4, 2)
    rates = {k: row[k]["images_per_s"] for k in ("replast", "reference", "synthetic")}
    assert all(r > 0 for r in rates.values())
    assert row["replast_vs_reference"] == pytest.approx(rates["replast"] / rates["reference"])
    assert row["replast_vs_synthetic"] == pytest.approx(rates["replast"] / rates["synthetic"])
    flat = " ".join(stdout.split())  # rich wraps at 80 columns, wherever the rates' widths put the break
    assert "x reference" in flat and str(out) in stdout.replace("\n", "")


@pytest.mark.parametrize("data, message", [
    ("animal-mnist", "reference DataLoader loop reads image files; pass br35h or imagefolder:PATH"),
    ("imagefolder:/nonexistent/folder", "does not exist"),
    ("nosuchdata", "unknown dataset"),
])
def test_bench_refuses_data_it_cannot_compare_on(cli, data, message, tmp_path):
    out = tmp_path / "bench.json"
    code, _, err = cli("bench", "--data", data, "--out", out)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("option, value, message", [
    ("--steps", "0", "steps=0"),
    ("--batch_size", "0", "batch_size=0"),
    ("--out", "{tmp}", "is a directory"),
    ("--out", "{tmp}/file.txt/bench.json", "not writable"),
])
def test_bench_refuses_bad_numbers_and_outputs_before_measuring(cli, image_folder, tmp_path, option, value,
                                                                  message):
    (tmp_path / "file.txt").write_text("keep")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    args = {"--steps": "2", "--batch_size": "4", "--out": str(tmp_path / "bench.json"),
            option: value.format(tmp=tmp_path)}
    code, stdout, err = cli("bench", "--models", "[mobilenetv2_050]", "--sizes", "[32]", "--weights", "none",
                            "--data", f"imagefolder:{image_folder}", *(x for kv in args.items() for x in kv))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and not stdout
    assert sorted(p.name for p in tmp_path.rglob("*")) == before and (tmp_path / "file.txt").read_text() == "keep"


def test_recorded_command_parses_back_to_the_same_options():
    """The JSON's `command` wrote `--models ['a', 'b'] --sizes [128, 224]`: pasted into a shell, the spaces
    split the lists and `replast bench` refused them."""
    import shlex

    from replast.bench import bench_command
    from replast.cli import build_parser

    command = bench_command(["mobilenetv2_100", "efficientnet_lite0"], [128, 224], 128, 100,
                            "imagefolder:/my images", "none")
    argv = shlex.split(command)
    assert argv[0] == "replast"
    parsed = build_parser().parse_args(argv[1:]).bench
    assert parsed.models == ["mobilenetv2_100", "efficientnet_lite0"] and parsed.sizes == [128, 224]
    assert (parsed.batch_size, parsed.steps, parsed.data, parsed.weights) == (128, 100, "imagefolder:/my images",
                                                                             "none")


def test_bench_with_fewer_images_than_one_batch_is_one_line_exit_2(cli, image_folder, tmp_path):
    """Both loops drop the last incomplete batch: with 18 images and --batch_size 64 the replast loop cycled
    through a million empty epochs into a StopIteration traceback (and the DataLoader loop would never end)."""
    out = tmp_path / "bench.json"
    code, stdout, err = cli("bench", "--models", "[mobilenetv2_050]", "--sizes", "[32]", "--batch_size", "64",
                            "--steps", "1", "--data", f"imagefolder:{image_folder}", "--weights", "none",
                            "--out", out)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--batch_size" in err, err
    assert not out.exists()
