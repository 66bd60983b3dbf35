"""The environment record in final.json: known answers for versions, device and replast's git commit."""

from __future__ import annotations

import subprocess
from importlib import metadata

import pandas as pd
import pytest
import torch

import replast
from replast import environment
from replast.report.provenance import NOT_RECORDED, environments


def test_describe_names_the_installed_versions_and_this_cpu():
    record = environment.describe(torch.device("cpu"))
    assert set(record) == {"replast", "commit", "python", *environment.PACKAGES, "device_name", "threads"}
    assert record["replast"] == replast.__version__
    assert all(record[name] == metadata.version(name) for name in environment.PACKAGES)
    assert record["threads"] == torch.get_num_threads()
    assert isinstance(record["device_name"], str) and record["device_name"]


def _git(repo, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def fake_source(tmp_path, monkeypatch):
    """replast.__file__ pointed at a package in a fresh git repository; source_commit's cache bypassed."""
    package = tmp_path / "repo" / "src" / "replast"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("x = 1\n")
    monkeypatch.setattr(replast, "__file__", str(package / "__init__.py"))
    return package


def test_source_commit_is_head_and_dirty_when_the_source_changed(fake_source):
    _git(fake_source, "init", "-q")
    assert environment.source_commit.__wrapped__() is None  # untracked, as an installed copy inside a repo
    _git(fake_source, "add", "__init__.py")
    _git(fake_source, "commit", "-q", "-m", "c")
    head = _git(fake_source, "rev-parse", "--short=7", "HEAD")
    assert environment.source_commit.__wrapped__() == head
    (fake_source / "__init__.py").write_text("x = 2\n")
    assert environment.source_commit.__wrapped__() == f"{head}-dirty"


def test_source_commit_outside_git_is_none(fake_source):
    assert environment.source_commit.__wrapped__() is None


def test_report_groups_finished_runs_by_environment():
    env = {"environment.torch": "2.11.0", "environment.device_name": "NVIDIA H200", "environment.threads": 8.0,
           "environment.commit": "abc1234", "world_size": 1}
    results = pd.DataFrame([
        {"status": "finished", **env}, {"status": "finished", **env},
        {"status": "finished", **env, "environment.device_name": "AMD EPYC", "environment.threads": 1.0},
        {"status": "finished", "world_size": 2},  # made before the record existed
        {"status": "failed:crash", **env},
    ])
    table = environments(results)
    assert table["runs"].tolist() == [2, 1, 1]
    assert table[["device", "threads", "processes", "torch"]].values.tolist() == [
        ["NVIDIA H200", "8", "1", "2.11.0"], ["AMD EPYC", "1", "1", "2.11.0"],
        [NOT_RECORDED, NOT_RECORDED, "2", NOT_RECORDED]]  # ties in the order of their cells' text
    assert (table["timm"] == NOT_RECORDED).all()  # a column no run recorded
    assert environments(results[results["status"] != "finished"]).empty
