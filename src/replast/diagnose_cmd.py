"""`replast diagnose`: per-layer plasticity on the user's data, optionally beside natural photos.

Writes diagnosis.json / diagnosis.csv and PNG plots to OUT (reference_* files with --compare) and prints
the most saturated layers as a table.
"""

from __future__ import annotations

from pathlib import Path

import torch
from rich.table import Table

from replast.checkpoint import write_text
from replast.diagnosis import diagnose
from replast.loading import first_batches, load_model_and_data
from replast.reference import reference_batches
from replast.report.diagnosis_plots import plot_diagnosis

SHOWN_COLUMNS = ("layer", "dormant_fraction", "small_grad_fraction", "grad_to_weight", "plasticity_score")


def run_diagnose(*, model: str, data: str, out: str, weights: str, batches: int, batch_size: int,
                 image_size: int | None, max_samples: int | None, compare: bool, seed: int, console) -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net, splits = load_model_and_data(model, data, weights=weights, device=device, image_size=image_size,
                                      seed=seed, max_samples=max_samples)
    out_dir = Path(out)
    report = diagnose(net, first_batches(splits, "train", batch_size, batches, seed=seed), num_batches=batches)
    reference = None
    if compare:
        photos = reference_batches(splits.preprocessing, splits.image_size, batch_size=batch_size, seed=seed,
                                   device=device)
        reference = diagnose(net, photos, num_batches=batches, labels="argmax")
        write_text(out_dir / "reference_diagnosis.json", reference.to_json())
    write_text(out_dir / "diagnosis.json", report.to_json())
    report.to_csv(out_dir / "diagnosis.csv")
    plots = plot_diagnosis(report, out_dir, reference=reference)
    _remove_stale(out_dir, keep={*plots, *([out_dir / "reference_diagnosis.json"] if compare else [])})
    console.print(_top_table(report, reference))
    for note in report.notes:
        console.print(f"note: {note}")
    console.print(f"features: {report.features}")
    console.print(f"wrote {out_dir / 'diagnosis.json'}, diagnosis.csv and {len(plots)} plots")
    return 0


def _remove_stale(out_dir: Path, keep: set[Path]) -> None:
    """Drop what an earlier diagnosis left in OUT and this one did not rewrite (the photos' diagnosis of a
    --compare run, plots of metrics this model lacks), so every file in OUT describes this run."""
    for path in [out_dir / "reference_diagnosis.json", *out_dir.glob("diagnosis_*.png")]:
        if path not in keep:
            path.unlink(missing_ok=True)


def _top_table(report, reference, rows: int = 15) -> Table:
    frame = report.to_frame()
    # Conv/Linear rows only: they carry the dormancy of the activation they feed, so their scores compare.
    frame = frame[(frame["kind"] == "param") & frame["plasticity_score"].notna()]
    ranked = len(frame)
    frame = frame.sort_values("plasticity_score", ascending=False).head(rows)
    ref = None
    if reference is not None:  # param rows only: a PReLU is also an activation row of the same name
        ref = reference.to_frame().query("kind == 'param'").set_index("layer")["plasticity_score"]
    table = Table(title=f"least plastic layers (of {ranked} with a score)")
    for column in (*SHOWN_COLUMNS, *(("reference_score",) if ref is not None else ())):
        table.add_column(column)
    for _, row in frame.iterrows():
        cells = [row["layer"], *(f"{row[c]:.3g}" for c in SHOWN_COLUMNS[1:])]
        if ref is not None:
            cells.append(f"{ref.get(row['layer'], float('nan')):.3g}")
        table.add_row(*cells)
    return table
