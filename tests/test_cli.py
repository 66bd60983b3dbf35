"""The real CLI end to end on CPU, and its bad-input contract: one line, exit code 2, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

import pytest
import yaml

from replast.cli import bare_flags_to_true


def test_finetune_one_epoch_on_synthetic(cli, tiny_run_args, tmp_path):
    code, out, err = cli("finetune", *tiny_run_args)
    assert code == 0, err
    run = tmp_path / "run"
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "finished"
    final = json.loads((run / "final.json").read_text())
    assert 0.0 <= final["test_acc"] <= 1.0 and final["epochs"] == 1
    assert final["environment"]["torch"] == metadata.version("torch") and final["environment"]["device_name"]
    assert (run / "metrics.csv").read_text().startswith("epoch,")
    assert (run / "config.yaml").exists() and (run / "splits.json").exists()
    assert (run / "checkpoints" / "last.pt").exists()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_dashed_option_names_are_accepted(cli, tiny_run_args):
    args = [a.replace("batch_size", "batch-size").replace("image_size", "image-size") for a in tiny_run_args]
    code, _, err = cli("finetune", *args, "--print_config")
    assert code == 0, err


def test_yes_no_options_without_a_value_mean_true(cli, tiny_run_args):
    code, out, err = cli("finetune", *tiny_run_args, "--train.compile", "--deterministic", "--print_config")
    assert code == 0, err
    config = yaml.safe_load(out)
    assert config["train"]["compile"] is True and config["deterministic"] is True and config["overwrite"] is False
    code, out, err = cli("finetune", *tiny_run_args, "--diagnose", "false", "--print_config")
    assert code == 0 and yaml.safe_load(out)["diagnose"] is False
    assert bare_flags_to_true(["sweep", "--collect", "--jobs", "2", "--force"]) == [
        "sweep", "--collect", "true", "--jobs", "2", "--force", "true"]
    assert bare_flags_to_true(["bench", "--steps", "--x"]) == ["bench", "--steps", "--x"]  # not yes/no options
    assert bare_flags_to_true(["reinit", "--reinit.zero_outgoing", "--overwrite"]) == [  # a config's fields too
        "reinit", "--reinit.zero_outgoing", "true", "--overwrite", "true"]


def test_python_dash_m_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "replast", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("finetune", "diagnose", "reinit", "sweep", "report", "demo", "models", "datasets"):
        assert command in result.stdout


BAD_INPUTS = [
    (["--model", "mobilenetv3_tiny_xyz"], "unknown model"),
    (["--model", "mobilenetv2_10"], "mobilenetv2_100"),
    (["--data", "fashion_mnst"], "fashion-mnist"),
    (["--epochs", "0"], "epochs=0"),
    (["--epochs", "-3"], "epochs=-3"),
    (["--batch_size", "0"], "batch_size=0"),
    (["--train_fraction", "1.5"], "train_fraction"),
    (["--reinit.fraction", "2"], "reinit.fraction"),
    (["--weights", "/nonexistent/weights.pth"], "weights.pth"),
    (["--data", "imagefolder:/nonexistent/folder"], "/nonexistent/folder"),
    (["--epochs", "two"], "epochs"),
    (["--no_such_option", "1"], "no_such_option"),
    (["--accelerator", "cuda", "--devices", "2"], "more GPUs than exist"),
]


@pytest.mark.parametrize("override,fragment", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(cli, tiny_run_args, tmp_path, override, fragment):
    args = list(tiny_run_args)
    for i in range(0, len(override), 2):
        if override[i] in args:
            args[args.index(override[i]) + 1] = override[i + 1]
        else:
            args += override[i:i + 2]
    code, out, err = cli("finetune", *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("replast: error:"), err
    assert fragment.lower() in lines[0].lower()
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "status.json").exists()


def test_finished_run_is_not_overwritten_without_flag(cli, tiny_run_args, tmp_path):
    assert cli("finetune", *tiny_run_args)[0] == 0
    before = (tmp_path / "run" / "final.json").read_text()
    code, _, err = cli("finetune", *tiny_run_args)
    assert code == 2 and "--overwrite" in err
    assert (tmp_path / "run" / "final.json").read_text() == before
    stale = [tmp_path / "run" / name for name in ("diagnosis.json", "autoscope.json", "reinit_report.json")]
    for path in stale:  # records of an earlier run with other options (--diagnose, --reinit.scope auto)
        path.write_text("{}")
    assert cli("finetune", *tiny_run_args, "--overwrite")[0] == 0
    assert not any(path.exists() for path in stale)  # this run (plain, no diagnosis) writes none of them


def test_out_that_is_a_file(cli, tiny_run_args, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    args = list(tiny_run_args)
    args[args.index("--out") + 1] = str(blocker / "run")
    code, _, err = cli("finetune", *args)
    assert code == 2 and "not writable" in err
    assert blocker.read_text() == "keep me"


def test_debug_shows_the_traceback(tiny_run_args):
    args = [sys.executable, "-m", "replast", "finetune", *tiny_run_args, "--epochs", "0", "--debug"]
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_diagnose_flag_writes_diagnosis_before_and_after(cli, tiny_run_args, tmp_path):
    code, _, err = cli("finetune", *tiny_run_args, "--diagnose", "true", "--reinit.strategy", "targeted",
                       "--reinit.batches", "2")
    assert code == 0, err
    diagnosis = json.loads((tmp_path / "run" / "diagnosis.json").read_text())
    assert set(diagnosis) == {"before_reinit", "after_reinit", "after_training"}
    rows = {r["layer"]: r for r in diagnosis["before_reinit"]["rows"]}
    after = {r["layer"]: r for r in diagnosis["after_reinit"]["rows"]}
    assert rows.keys() == after.keys()
    # Re-initialization changed weights, so some weight norm differs right after it.
    assert any(rows[k]["weight_norm"] != after[k]["weight_norm"] for k in rows if rows[k].get("weight_norm"))
