"""The happy paths of the CLI subcommands, in-process on CPU: reinit, diagnose --compare, models, datasets,
sweep (its exit codes and --cluster, with the fake trainer) and report. The real smoke study end to end is
test_experiment.py's."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from replast.data import list_datasets
from replast.loading import load_model_and_data
from replast.models import list_models

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--model", "mobilenetv2_050", "--weights", "none", "--data", "synthetic", "--image_size", "32",
         "--batch_size", "8"]
PNG = b"\x89PNG\r\n\x1a\n"


def flat(text: str) -> str:
    """Printed text with rich's line wrapping undone."""
    return " ".join(text.split())


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("REPLAST_CACHE", str(tmp_path / "cache"))


def test_reinit_writes_the_model_and_changes_exactly_the_reported_entries(cli, tmp_path):
    out = tmp_path / "model.safetensors"
    torch.manual_seed(0)  # weights=none draws the initial model from the global generator
    code, stdout, err = cli("reinit", *SMALL, "--reinit.batches", 2, "--reinit.fraction", 0.2, "--out", out)
    assert code == 0, err
    torch.manual_seed(0)
    original, splits = load_model_and_data("mobilenetv2_050", "synthetic", weights="none", image_size=32,
                                           seed=0)  # the CLI's default seed: same split, same class order
    before = original.state_dict()
    with safe_open(str(out), "pt") as f:
        after = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    assert after.keys() == before.keys()
    assert metadata["model"] == "mobilenetv2_050" and json.loads(metadata["classes"]) == splits.classes
    stats = ("running_mean", "running_var", "num_batches_tracked")
    changed = {k: int((after[k] != before[k]).sum()) for k in before if not k.endswith(stats)}
    report = json.loads(out.with_suffix(".json").read_text())
    stale = {k.rpartition(".")[0] for k in before if k.endswith(stats) and not torch.equal(after[k], before[k])}
    assert stale and stale <= set(report["bn_recomputed"])  # BatchNorm statistics re-estimated, and said so
    reported = {row["param"]: row["n_reset"] for row in report["rows"]}
    assert report["strategy"] == "targeted" and report["n_batches"] == 2
    assert 0 < report["n_reset"] < report["numel"]
    assert sum(changed.values()) == report["n_reset"]
    assert {k: n for k, n in changed.items() if n} == {k: n for k, n in reported.items() if n}
    assert f"re-initialized {report['n_reset']} of {report['numel']}" in flat(stdout)


def test_diagnose_with_compare_writes_tables_reference_and_plots(cli, tmp_path):
    out = tmp_path / "diagnosis"
    code, stdout, err = cli("diagnose", *SMALL, "--batches", "1", "--compare", "true", "--out", out)
    assert code == 0, err
    rows = json.loads((out / "diagnosis.json").read_text())["rows"]
    reference = json.loads((out / "reference_diagnosis.json").read_text())["rows"]
    assert rows and {r["layer"] for r in rows} == {r["layer"] for r in reference}
    assert (out / "diagnosis.csv").read_text().startswith("layer,")
    plots = sorted(out.glob("diagnosis_*.png"))
    assert plots and all(p.read_bytes().startswith(PNG) for p in plots)
    assert f"{len(plots)} plots" in flat(stdout)
    # The title counts the layers it ranks (Conv/Linear/norm rows with a score), not every row of the report
    # (activation rows too), which said "of 140" above a ranking of 105 layers.
    scored = sum(r["kind"] == "param" and r["plasticity_score"] is not None for r in rows)
    assert f"least plastic layers (of {scored} with a score)" in flat(stdout)


@pytest.mark.parametrize(("command", "names"), [("models", lambda: [m["name"] for m in list_models()]),
                                                ("datasets", lambda: [d["name"] for d in list_datasets()])])
def test_listings_name_every_entry(cli, command, names):
    code, stdout, err = cli(command)
    assert code == 0, err
    expected = names()
    assert expected and all(name in stdout for name in expected), stdout


@pytest.mark.parametrize(("command", "rows"), [("models", list_models), ("datasets", list_datasets)])
def test_listings_as_csv_and_json_hold_every_field_in_full(cli, command, rows):
    code, stdout, err = cli(command, "--format", "csv")
    assert code == 0, err
    as_text = [{k: "" if v is None else str(v) for k, v in row.items()} for row in rows()]
    assert list(csv.DictReader(io.StringIO(stdout))) == as_text  # locations and descriptions uncut
    code, stdout, err = cli(command, "--format", "json")
    assert code == 0, err
    assert json.loads(stdout) == rows()
    code, stdout, err = cli(command, "--format", "yaml")
    assert code == 2 and not stdout and len(err.strip().splitlines()) == 1 and "table" in err and "csv" in err


def test_sweep_then_report(cli, fake_trainer, tmp_path):
    out = tmp_path / "smoke"
    code, stdout, err = cli("sweep", "--config", ROOT / "studies" / "smoke.yaml", "--out", out, "--jobs", "2")
    assert code == 0, err
    assert "4 runs" in flat(stdout) and "4 finished now" in flat(stdout)
    code, stdout, err = cli("report", out)
    assert code == 0, err
    assert "report.md" in flat(stdout) and (out / "report.html").exists()
    assert "## synthetic × mobilenetv2_050" in (out / "report.md").read_text()


def study(tmp_path: Path, seeds: list[int]) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "out": str(tmp_path / "out"),
                                    "base": {"model": "resnet10t", "weights": "none", "data": "synthetic",
                                             "epochs": 1}, "grid": {"seed": seeds}}))
    return path


def test_sweep_exits_1_when_a_run_does_not_finish(cli, fake_trainer, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_CRASH", "1")  # the fake trainer crashes on seed 13
    code, stdout, err = cli("sweep", "--config", study(tmp_path, [0, 13]))
    assert code == 1, err
    assert "1 not finished" in flat(stdout) and "simulated crash" in flat(stdout)
    monkeypatch.delenv("FAKE_CRASH")
    assert cli("sweep", "--config", study(tmp_path, [0, 13]))[0] == 0  # resumed: everything finished


def test_sweep_cluster_option_picks_the_submitit_executor(cli, fake_trainer, tmp_path):
    config = study(tmp_path, [0])
    code, stdout, err = cli("sweep", "--config", config, "--launcher", "slurm", "--cluster", "debug")
    assert code == 0, err
    launch = next((tmp_path / "out" / "runs").glob("*/launch.json"))
    assert (tmp_path / "out" / "slurm").is_dir() and json.loads(launch.read_text())["slurm_job_id"]
    code, _, err = cli("sweep", "--config", config, "--cluster", "lsf")
    assert code == 2 and "cluster" in err


def test_sweep_with_the_slurm_launcher_where_there_is_no_slurm_is_one_line_and_writes_nothing(
        cli, fake_trainer, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # no srun to be found
    code, _, err = cli("sweep", "--config", study(tmp_path, [0]), "--launcher", "slurm")
    assert code == 2 and "srun" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # no runs left queued for a launcher that cannot start them
    monkeypatch.setitem(sys.modules, "submitit", None)  # an installation without submitit
    code, _, err = cli("sweep", "--config", study(tmp_path, [0]), "--launcher", "slurm", "--cluster", "local")
    assert code == 2 and "pip install submitit" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# ---- replast reinit: sizes, paths, the report beside OUT, scope auto, round trip ---------------------------
REINIT_SMALL = ["--model", "mobilenetv2_050", "--weights", "none", "--data", "synthetic", "--image_size", "32",
         "--batch_size", "8", "--reinit.batches", "1"]


def test_generic_timm_vit_at_another_size_is_one_line_exit_2(cli, tmp_path):
    """A timm ViT built by name has a fixed img_size: 32 px passes the patch-multiple check, then timm's
    `_assert` raises AssertionError, which nothing turns into a one-line error."""
    out = tmp_path / "vit.safetensors"
    code, _, err = cli("reinit", "--model", "vit_tiny_patch16_224", "--weights", "none", "--data", "synthetic",
                       "--image_size", "32", "--batch_size", "8", "--reinit.batches", "1", "--out", out)
    assert code in (0, 2) and (code == 0 or len(err.strip().splitlines()) == 1), err
    assert code == 0 or not out.exists()


@pytest.mark.parametrize("option", ["--out", "--weights"])
def test_overlong_path_is_one_line_exit_2(cli, tmp_path, option):
    """Path.exists() raises OSError(ENAMETOOLONG) on Python < 3.13 instead of returning False: the export's
    `path.exists()` and read_state_dict's leak a traceback."""
    long = tmp_path / ("a" * 300 + (".safetensors" if option == "--out" else ".pth"))
    args = {"--out": str(tmp_path / "m.safetensors"), "--weights": "none"}
    args[option] = str(long)
    code, _, err = cli("reinit", "--model", "mobilenetv2_050", "--data", "synthetic", "--image_size", "32",
                       "--batch_size", "8", "--reinit.batches", "1", "--out", args["--out"],
                       "--weights", args["--weights"])
    assert code == 2 and len(err.strip().splitlines()) == 1, err



def test_reinit_does_not_clobber_an_existing_report_file_without_overwrite(cli, tmp_path):
    """An existing OUT is kept unless --overwrite, but the report beside it (OUT with .json) is replaced
    silently: `--out model.safetensors` destroys any model.json."""
    out = tmp_path / "model.safetensors"
    sidecar = tmp_path / "model.json"
    sidecar.write_text('{"mine": true}')
    code, _, err = cli("reinit", *REINIT_SMALL, "--out", out)
    assert json.loads(sidecar.read_text()) == {"mine": True}, (code, err)


def test_reinit_scope_auto_is_usable_from_the_command_line(cli, tmp_path):
    """ReinitConfig.scope documents 'all | auto' and finetune resolves auto; reinit passes 'auto' straight
    to restore_plasticity, which refuses it (after loading model and data) with advice for the Python API."""
    out = tmp_path / "auto.safetensors"
    code, _, err = cli("reinit", *REINIT_SMALL, "--reinit.scope", "auto", "--out", out)
    assert code == 0, err


def test_exported_file_reloads_into_the_same_model_exactly(cli, tmp_path):
    """Round trip: the exported state dict (BN buffers and counters included) loads back with load_model."""
    from safetensors import safe_open

    from replast.models import load_model

    out = tmp_path / "model.safetensors"
    code, _, err = cli("reinit", *REINIT_SMALL, "--out", out)
    assert code == 0, err
    with safe_open(str(out), "pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}
        classes = json.loads(f.metadata()["classes"])
    model, _ = load_model("mobilenetv2_050", num_classes=len(classes), weights=str(out))
    state = model.state_dict()
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[k], saved[k]) for k in saved)


@pytest.mark.parametrize("blocked", ["diagnosis.csv", "diagnosis_weight_norm.png"])
def test_diagnose_output_file_that_is_a_directory_is_one_line_exit_2(cli, tmp_path, blocked):
    """diagnosis.csv (pandas' to_csv) and the PNGs (savefig) were written in place, outside atomic_write: an
    OSError there was a raw IsADirectoryError traceback, and an interrupted write left a partial file."""
    out = tmp_path / "diagnosis"
    (out / blocked).mkdir(parents=True)
    code, _, err = cli("diagnose", *SMALL, "--batches", "1", "--out", out)
    assert code == 2 and len(err.strip().splitlines()) == 1 and blocked in err, err
    assert not list(out.glob(".*.tmp"))  # no temporary file left behind


@pytest.mark.parametrize("blocked", ["model.safetensors", "model.json"])
def test_reinit_output_or_report_path_that_is_a_directory_fails_before_writing(cli, tmp_path, blocked):
    """A directory at OUT was answered `exists; pass --overwrite`, which cannot help; a directory at the
    report's path (OUT with .json) failed only after OUT itself was written, so --overwrite left a model file
    without its report (or a new model beside an old report)."""
    out = tmp_path / "model.safetensors"
    (tmp_path / blocked).mkdir()
    for extra in ([], ["--overwrite"]):
        code, _, err = cli("reinit", *REINIT_SMALL, "--out", out, *extra)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "is a directory" in err, err
        assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == [blocked]


def test_exported_head_is_kept_when_the_file_is_loaded_for_data_with_its_class_count(cli, tmp_path):
    """load_model keeps a loaded head that has the data's class count, but load_model_and_data built every
    model with a provisional 2-class head first: a file's head of any other class count (synthetic has 3)
    was replaced by a random one, so `replast diagnose --weights FILE` measured a model that FILE is not."""
    out = tmp_path / "model.safetensors"
    code, _, err = cli("reinit", *REINIT_SMALL, "--out", out)
    assert code == 0, err
    with safe_open(str(out), "pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}
    model, splits = load_model_and_data("mobilenetv2_050", "synthetic", weights=str(out), image_size=32)
    assert splits.num_classes == 3
    state = model.state_dict()
    assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)


@pytest.mark.parametrize("existing", [False, True])
def test_reinit_that_fails_writing_its_report_leaves_no_model_without_it(cli, tmp_path, monkeypatch, existing):
    """OUT was written (renamed into place) before OUT.json: a failure writing the report left a new model
    with no report, or with --overwrite, a new model beside the previous run's report."""
    import errno
    import os

    out = tmp_path / "model.safetensors"
    if existing:
        out.write_bytes(b"old model")
        out.with_suffix(".json").write_text('{"old": true}')
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith(".json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    code, _, err = cli("reinit", *REINIT_SMALL, "--out", out, *(["--overwrite"] if existing else []))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "cache")
    assert left == (["model.json", "model.safetensors"] if existing else []), left
    if existing:
        assert out.read_bytes() == b"old model" and out.with_suffix(".json").read_text() == '{"old": true}'


@pytest.mark.parametrize("change", ["reversed", "renamed"])
def test_weight_file_whose_classes_differ_from_the_data_s_is_one_line_exit_2(cli, tmp_path, change):
    """A file's head is kept when it has the data's class count; a file written by `replast reinit` names its
    classes, and data with the same count but other names (or another order) had its labels silently paired
    with the wrong outputs."""
    from safetensors.torch import save_file

    from replast.errors import ConfigError
    from replast.models import load_model

    classes = load_model_and_data("mobilenetv2_050", "synthetic", weights="none", image_size=32)[1].classes
    saved = classes[::-1] if change == "reversed" else [f"other{i}" for i in range(len(classes))]
    model, _ = load_model("mobilenetv2_050", num_classes=len(classes), weights="none")
    out = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out),
              metadata={"model": "mobilenetv2_050", "classes": json.dumps(saved), "format": "replast-state-dict"})
    with pytest.raises(ConfigError, match="other names or order"):
        load_model_and_data("mobilenetv2_050", "synthetic", weights=str(out), image_size=32)
    code, _, err = cli("diagnose", *SMALL[:2], "--weights", out, *SMALL[4:], "--batches", "1",
                       "--out", tmp_path / "d")
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(saved) in err, err
    assert not (tmp_path / "d").exists()


def test_another_tool_s_classes_metadata_does_not_stop_a_kept_head(tmp_path):
    """Only replast reinit's files (format replast-state-dict) are held to their classes list."""
    from safetensors.torch import save_file

    from replast.models import load_model

    model, _ = load_model("mobilenetv2_050", num_classes=3, weights="none")
    out = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out),
              metadata={"classes": json.dumps(["x", "y", "z"])})
    loaded, _ = load_model_and_data("mobilenetv2_050", "synthetic", weights=str(out), image_size=32)
    assert torch.equal(loaded.state_dict()["classifier.weight"], model.state_dict()["classifier.weight"])


def test_diagnose_again_into_the_same_out_leaves_no_file_of_the_earlier_run(cli, tmp_path):
    """A diagnosis without --compare kept the earlier run's reference_diagnosis.json (and a CNN kept a ViT's
    attention plot) beside its own files, as if they described it."""
    out = tmp_path / "diagnosis"
    assert cli("diagnose", *SMALL, "--batches", "1", "--compare", "true", "--out", out)[0] == 0
    stale = out / "diagnosis_attn_entropy.png"  # as a ViT's diagnosis writes it
    stale.write_bytes(PNG)
    code, stdout, err = cli("diagnose", *SMALL, "--batches", "1", "--out", out)
    assert code == 0, err
    assert not (out / "reference_diagnosis.json").exists() and not stale.exists()
    assert f"{len(list(out.glob('diagnosis_*.png')))} plots" in flat(stdout)
