"""README's Python API example runs as written, on the real weights and data."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_api_example_runs(capsys):
    block = python_blocks()[0]
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    report = namespace["report"]
    assert 0.09 < report.n_reset / report.numel < 0.11
    out = capsys.readouterr().out
    assert "plasticity_score" in out and "n_reset" in out


def test_plain_script_example_runs_on_a_plain_loader():
    block = python_blocks()[1].replace("my_dataset", "dataset")
    images = torch.rand(64, 3, 32, 32)
    dataset = torch.utils.data.TensorDataset(images, torch.randint(0, 10, (64,)))
    namespace = {"dataset": dataset}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["report"].n_reset > 0


def test_continual_example_runs_after_the_plain_script():
    plain, continual = python_blocks()[1:3]
    dataset = torch.utils.data.TensorDataset(torch.rand(64, 3, 32, 32), torch.randint(0, 10, (64,)))
    namespace = {"dataset": dataset}
    exec(compile(plain.replace("my_dataset", "dataset"), "README.md", "exec"), namespace)
    exec(compile(continual.replace("every:500", "every:1"), "README.md", "exec"), namespace)
    events = namespace["continual"].events
    assert [e["step"] for e in events] == [1, 2] and all(e["n_reset"] > 0 for e in events)


def test_public_api_names_resolve():
    import replast

    for name in replast.__all__:
        assert getattr(replast, name) is not None
