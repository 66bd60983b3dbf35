"""The functions behind each CLI subcommand: typed arguments in, library calls, a printed summary out.

Their signatures and docstrings are the CLI (see cli.py); heavy imports happen inside, so `--help` is quick.
"""

from __future__ import annotations

from typing import Literal

from rich.console import Console
from rich.table import Table

from replast.config import FinetuneConfig, ReinitConfig, reinit_errors, seed_errors, unknown_keys
from replast.errors import ConfigError

console = Console(stderr=False)


def _table(title: str, rows: list[dict]) -> Table:
    table = Table(title=title)
    for i, column in enumerate(rows[0] if rows else []):
        # The first column holds the names users type: never cut, even in an 80-column pipe.
        width = max(len(_fmt(row[column])) for row in rows) if i == 0 else None
        table.add_column(str(column), no_wrap=i == 0, min_width=width)
    for row in rows:
        table.add_row(*(_fmt(v) for v in row.values()))
    return table


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


Listing = Literal["table", "csv", "json"]


def _print_listing(title: str, rows: list[dict], format: Listing) -> None:
    """A rich table for people; CSV or JSON (every field, nothing cut) for scripts and narrow pipes."""
    if format == "table":
        console.print(_table(title, rows))
    elif format == "csv":
        import csv
        import sys

        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        import json

        print(json.dumps(rows, indent=2))


def models(format: Listing = "table") -> int:
    """List the model zoo: names with shipped offline weights (any timm/torchvision name also works).

    Args:
        format: table (for reading), csv or json (for scripts: every field in full).
    """
    from replast.models import list_models

    _print_listing("replast model zoo", list_models(), format)
    return 0


def datasets(format: Listing = "table") -> int:
    """List the shipped datasets (and the imagefolder:PATH form for your own data).

    Args:
        format: table (for reading), csv or json (for scripts: every field in full).
    """
    from replast.data import list_datasets

    _print_listing("replast datasets", list_datasets(), format)
    return 0


def finetune(cfg: FinetuneConfig) -> int:
    """Fine-tune one run; exit 0 when finished, 1 when it stopped (interrupted or non-finite)."""
    from replast.pipeline import finetune as run

    record = run(cfg)
    if record.get("global_rank", 0) != 0:
        return 0 if "status" not in record else 1
    if "status" in record:
        console.print(f"run stopped: {record['status']} at step {record['step']} ({cfg.out})")
        return 1
    console.print(f"finished {cfg.out}: test acc {record['test_acc']:.4f}, balanced {record['test_balanced_acc']:.4f}, "
                  f"best val {record['best_val_acc']:.4f} (epoch {record['best_epoch']}), "
                  f"{record['wall_time_s']:.1f} s")
    return 0


def diagnose(model: str = "mobilenetv2_100", data: str = "br35h", out: str = "runs/diagnose",
             weights: str = "pretrained", batches: int = 8, batch_size: int = 32, image_size: int | None = None,
             max_samples: int | None = None, compare: bool = False, seed: int = 0) -> int:
    """Per-layer plasticity (dormant units, small gradients, feature rank) on the data, with PNG plots.

    Args:
        model: Model name (see `replast models`).
        data: Dataset name or imagefolder:PATH.
        out: Output directory for diagnosis.json/csv and plots.
        weights: pretrained, none, or a weight file (its head is kept when it has one output per class of the data).
        batches: Training batches to measure on.
        batch_size: Images per batch.
        image_size: Input side in pixels (None = the model's native size).
        max_samples: Cap on the dataset size (None = all).
        compare: Also diagnose natural photos (64 augmented crops of scikit-image's samples, labelled by the
            model's own predictions) side by side.
        seed: Seed of the split and batch order.
    """
    from replast.diagnose_cmd import run_diagnose
    from replast.runfiles import check_creatable

    _refuse(seed_errors(seed) + ([f"batches={batches}: must be at least 1"] if batches < 1 else []))
    check_creatable(out, directory=True)
    return run_diagnose(model=model, data=data, out=out, weights=weights, batches=batches, batch_size=batch_size,
                        image_size=image_size, max_samples=max_samples, compare=compare, seed=seed, console=console)


def reinit_model(model: str = "mobilenetv2_100", data: str = "br35h", out: str = "reinit.safetensors",
           weights: str = "pretrained", batch_size: int = 32, image_size: int | None = None,
           max_samples: int | None = None, seed: int = 0, overwrite: bool = False,
           reinit: ReinitConfig = ReinitConfig(strategy="targeted")) -> int:  # noqa: B008
    """Re-initialize a model on your data and save it as safetensors for use in any training script.

    Args:
        model: Model name (see `replast models`).
        data: Dataset name or imagefolder:PATH (utilities are computed on its training split).
        out: Output .safetensors file (a .json report is written beside it).
        weights: pretrained, none, or a weight file.
        batch_size: Images per utility batch.
        image_size: Input side in pixels (None = the model's native size).
        max_samples: Cap on the dataset size (None = all).
        seed: Seeds the split, the batches and the re-initialization.
        overwrite: Replace existing output files (the .safetensors file and its .json report).
        reinit: What to re-initialize and how (lr_scale, lr_warmup_steps and schedule act during training:
            refused here).
    """
    from replast.export import export_reinitialized

    if not isinstance(reinit, ReinitConfig):  # jsonargparse hands nested dataclasses over as dicts
        _refuse(unknown_keys(ReinitConfig, reinit, "reinit."))  # `reinit: 3` in a --config file passes it
        reinit = ReinitConfig(**reinit)
    _refuse(seed_errors(seed) + reinit_errors(reinit) + training_time_errors(reinit))
    return export_reinitialized(model=model, data=data, out=out, weights=weights, batch_size=batch_size,
                                image_size=image_size, max_samples=max_samples, seed=seed, overwrite=overwrite,
                                reinit=reinit, console=console)


def training_time_errors(reinit: ReinitConfig) -> list[str]:
    """lr_scale, lr_warmup_steps and schedule act while training, which an exported file cannot carry."""
    default = ReinitConfig()
    changed = [f"reinit.{key}={getattr(reinit, key)!r}" for key in ("lr_scale", "lr_warmup_steps", "schedule")
               if getattr(reinit, key) != getattr(default, key)]
    if not changed:
        return []
    return [f"{', '.join(changed)}: act during training, which `replast reinit` does not do (the file would only "
            "mention them); leave them out here and pass them to `replast finetune` or the Lightning callback "
            "(replast.integrations.RestorePlasticity)"]


def _refuse(errors: list[str]) -> None:
    """One ConfigError listing every problem, before any model or data loads."""
    if errors:
        raise ConfigError("; ".join(errors))


def sweep(config: str, out: str | None = None, launcher: Literal["local", "slurm"] = "local", jobs: int = 1,
          force: bool = False, collect: bool = False, partition: str | None = None, time_min: int = 60,
          gpus_per_node: int = 1, cpus_per_task: int = 8,
          cluster: Literal["slurm", "local", "debug"] = "slurm", only: str | None = None) -> int:
    """Run every run of a study (skipping finished ones), then collect results.csv and curves.csv.

    Exits 1 when a run did not finish (the summary lists them), 0 otherwise.

    Args:
        config: Study YAML file (or the name of a shipped study: demo, smoke, paper).
        out: Output directory (default: the study's `out`).
        launcher: local (subprocesses on this machine) or slurm (submitit job array).
        jobs: Runs at once: local subprocesses (one GPU each when several exist), or the cap on the slurm
            array's running tasks (1: no cap).
        force: Use an OUT directory that holds another study, or merged results (results.csv without runs/).
        collect: Only rebuild results.csv and curves.csv from the run directories.
        partition: SLURM partition.
        time_min: SLURM time limit per run, in minutes (at least 1).
        gpus_per_node: SLURM GPUs per run (0 on a CPU cluster).
        cpus_per_task: SLURM CPUs per run (at least 1).
        cluster: submitit executor of the slurm launcher: slurm, or local/debug to try a study here.
        only: Run one part of the study: "KEY=VALUE[,VALUE…] …", e.g. "data=br35h train_fraction=0.05".
    """
    from replast.experiment import sweep as run_sweep

    summary = run_sweep(config, out=out, launcher=launcher, jobs=jobs, force=force, collect_only=collect,
                        slurm={"partition": partition, "time_min": time_min, "gpus_per_node": gpus_per_node,
                               "cpus_per_task": cpus_per_task, "cluster": cluster}, only=only,
                        on_progress=lambda line: console.print(line, highlight=False, soft_wrap=True))
    console.print(str(summary))
    return 0 if summary.ok else 1


def merge(source: str, into: str) -> int:
    """Add the finished runs of one study OUT to another's results.csv and curves.csv.

    For a study run in parts on several machines: `replast merge runs/paper docs/results/paper`, then
    `replast report docs/results/paper`. INTO's rows stay; a run finished in both keeps INTO's row.

    Args:
        source: A study's OUT directory (its runs/ are read afresh) or a folder holding results.csv.
        into: The folder whose results.csv and curves.csv receive the runs (created when missing).
    """
    from replast.store import merge as merge_runs

    console.print(str(merge_runs(source, into)))
    return 0


def report(out: str) -> int:
    """Write report.md and a self-contained report.html for a study's OUT directory.

    Args:
        out: The study's output directory (holding runs/ and results.csv).
    """
    from replast.report import render

    for path in render(out):
        console.print(f"wrote {path}")
    return 0


def bench(models: list[str] | None = None, sizes: list[int] | None = None, batch_size: int = 64,
          steps: int = 20, out: str | None = None, data: str = "br35h", weights: str = "pretrained") -> int:
    """Training images/s of replast against a plain DataLoader loop and a synthetic on-device upper bound.

    Args:
        models: Models to measure (default: mobilenetv2_100, efficientnet_lite0).
        sizes: Image sides in pixels (default: 128 on CPU; 128 and 224 on GPU).
        batch_size: Images per step.
        steps: Timed steps per measurement (after warm-up).
        out: JSON output (default: benchmarks/results/throughput_<device>.json).
        data: Images both pipelines read: br35h or imagefolder:PATH.
        weights: pretrained, none or a file (speed does not depend on the values).
    """
    from replast.bench import run_throughput

    return run_throughput(models=models, sizes=sizes, batch_size=batch_size, steps=steps, out=out, console=console,
                          data=data, weights=weights)


def demo(out: str = "runs/demo", jobs: int = 1) -> int:
    """The embedded default job: MobileNetV2 (ImageNet weights) on a Br35H subset, strategies side by side.

    Args:
        out: Output directory of the demo study.
        jobs: Runs at once.
    """
    from replast.demo import run_demo

    return run_demo(out=out, jobs=jobs, console=console)
