"""`render(OUT)`: read the study's runs, compute the tables, draw the figures, write report.md + report.html.

Outputs: OUT/report.md (PNG links), OUT/report.html (self-contained), OUT/report/figures/*.png,
OUT/report/summary.csv (one row per condition × strategy), OUT/report/overview.csv (one row per strategy:
Δ vs none and significance per condition), OUT/report/environments.csv (the software and hardware of the
finished runs) and OUT/report/runs.csv (per run, with arm, condition, epochs_to_95 and epochs_to_100).
"""

from __future__ import annotations

import math
import os
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from replast.checkpoint import atomic_write, write_text
from replast.errors import OutputError
from replast.experiment import collect
from replast.report import layers, overview, plots, provenance
from replast.report.blocks import Block, Figure, Heading, Paragraph, Table
from replast.report.html import to_html
from replast.report.labels import BASELINE, figure_stems
from replast.report.markdown import to_markdown
from replast.report.summary import sentence
from replast.report.tables import Condition, conditions
from replast.store import check_columns, study_name
from replast.study import late_field_defaults

METHODS = (
    "Accuracy is test-split accuracy at the end of training, mean over seeds with a 95% Student-t CI. "
    "Δ is the seed-paired difference to the none baseline (plain fine-tuning) in percentage points with a "
    "95% t CI and the paired t-test's p (n equal differences: the exact sign-flip p, 2/2^n), Holm-corrected "
    "over the strategies of each table, not across tables; '(k pairs)' = fewer seeds paired with the baseline "
    "than the arm has. Epochs to 95% / 100% = first epoch whose validation accuracy reaches that share of the "
    "baseline's mean final validation accuracy, median over the runs ('never' = most runs never reach it). "
    "Reached 100% = runs that get there. Val acc = mean final validation accuracy: choose settings by it, never "
    "by test accuracy. Speed-up = baseline's median epochs / strategy's median epochs to 100%. Overhead = time "
    "spent re-initializing as % of one mean epoch."
)


def _load(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    if (out / "runs").is_dir():
        return collect(out, write=False)
    if (out / "results.csv").exists():
        # hashes are hex text: one of digits only ("012345678901", "12e456789012") must not become a number
        results = _read_table(out / "results.csv", dtype={"environment.commit": str, "hash": str})
        curves = _read_table(out / "curves.csv", dtype={"hash": str})
        if not len(results.columns):
            return results, curves, []
        if (results["status"] == "finished").any() and "seed" not in results:  # runs are paired by seed
            raise OutputError(f"{out / 'results.csv'} has no seed column; is it a replast results file?")
        for key, default in late_field_defaults().items():  # rows of a part made before the field existed
            if key in results:
                results[key] = results[key].fillna(default)
        unfinished = results[results["status"] != "finished"]
        return results, curves, unfinished.astype(object).where(unfinished.notna(), "").to_dict("records")
    raise OutputError(f"{out} holds neither runs/ nor results.csv; run `replast sweep` first or check the path")


def _read_table(path: Path, **options) -> pd.DataFrame:
    """results.csv or curves.csv of an OUT without runs/. A missing file or one without columns (what a
    merge of a study with no runs yet writes) is an empty table, as `replast merge` reads it."""
    if not path.is_file():
        return pd.DataFrame()
    try:
        table = pd.read_csv(path, **options)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise OutputError(f"{path} is not a readable CSV table ({' '.join(str(e).split())[:120]}); "
                          "is it a replast results file?") from e
    check_columns(path, list(table.columns))
    return table


def _fmt(value: float, digits: int = 1, scale: float = 1.0, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if math.isinf(value):
        return "never"
    value = round(scale * value, digits) + 0.0  # + 0.0: a value that rounds to zero prints without a minus
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _with_ci(mean: float, low: float, high: float, sign: bool = False) -> str:
    """'mean [low, high]' in %, or the mean alone where there is no interval (one seed)."""
    text = _fmt(mean, scale=100, sign=sign)
    if math.isnan(low) or math.isnan(high):
        return text
    return f"{text} [{_fmt(low, scale=100, sign=sign)}, {_fmt(high, scale=100, sign=sign)}]"


def table_rows(table: pd.DataFrame) -> list[list[str]]:
    """The cells of a comparison table (`tables.arm_table`), formatted as the report prints them (HEADERS)."""
    rows = []
    for _, r in table.iterrows():
        pairs = r.get("pairs", 0)
        fewer = "" if math.isnan(r["delta"]) or pd.isna(pairs) or pairs == r["n"] else f" ({int(pairs)} pairs)"
        rows.append([
            str(r["arm"]), str(int(r["n"])), _with_ci(r["acc"], r["acc_low"], r["acc_high"]),
            _fmt(r.get("val_acc", math.nan), scale=100),
            "—" if math.isnan(r["delta"]) else _with_ci(r["delta"], r["delta_low"], r["delta_high"], sign=True) + fewer,
            _p(r["p_holm"]), f"{_fmt(r['epochs_to_95'])} / {_fmt(r['epochs_to_100'])}",
            f"{int(r['reached_100'])}/{int(r.get('runs', r['n']))}", _fmt(r["speedup"], 2),
            _fmt(r.get("overhead_pct", math.nan), 1)])
    return rows


def _p(value: float) -> str:
    if math.isnan(value):
        return "—"
    if value < 0.001:
        return "<0.001"
    # one more digit where three would round a p below 0.05 up to 0.050 (or one above down to it)
    return f"{value:.4f}" if round(value, 3) == 0.05 and value != 0.05 else f"{value:.3f}"


OVERVIEW_NOTE = (
    "Δ vs none in percentage points per condition (the none row: its test accuracy in %); * = significant as in "
    "the tables below (Holm-corrected over the strategies of that condition's table, p < 0.05, and the 95% CI "
    "of Δ excludes 0); — = not run there, or too few seeds paired with none. Higher / lower = in how many "
    "conditions the arm is significantly above / below none. Pooled = all seed-paired differences of all "
    "conditions as one sample (n pairs; t CI and paired t-test, Holm-corrected over the arms): whether an arm "
    "moves accuracy the same way across the conditions of this study, each weighted by its number of seeds; "
    "differences between conditions count as noise, which makes it conservative.")


def overview_blocks(table: pd.DataFrame) -> list[Block]:
    """The study-level section (`overview.overview`); nothing when fewer than two conditions have a baseline."""
    titles = overview.condition_titles(table)
    if len(titles) < 2:
        return []
    rows = []
    for _, r in table.iterrows():
        if r["arm"] == BASELINE:
            rows.append([f"{BASELINE} (test acc)", *(_percent(r[f"{overview.DELTA}{t}"]) for t in titles),
                         "", "", "", ""])
            continue
        cells = [_fmt(r[f"{overview.DELTA}{t}"], scale=100, sign=True) + _star(r[f"significant:{t}"]) for t in titles]
        rows.append([r["arm"], *cells, str(int(r["higher"])), str(int(r["lower"])), *_pooled_cells(r)])
    return [Heading(2, "All conditions at a glance"), Paragraph(OVERVIEW_NOTE),
            Table(["Strategy", *titles, "Higher", "Lower", "Pooled Δ, pp [95% CI] (n)", "Pooled p (Holm)"], rows)]


def _pooled_cells(r: pd.Series) -> list[str]:
    p, low, high = r["pooled_p_holm"], r["pooled_delta_low"], r["pooled_delta_high"]
    if pd.isna(r["pooled_n"]) or math.isnan(p):
        return ["—", "—"]
    return [f"{_fmt(r['pooled_delta'], scale=100, sign=True)}{_star(r['pooled_significant'])} "
            f"[{_fmt(low, scale=100, sign=True)}, {_fmt(high, scale=100, sign=True)}] ({int(r['pooled_n'])})", _p(p)]


def _star(flag: object) -> str:
    return "*" if pd.notna(flag) and bool(flag) else ""  # NaN: the arm did not run in that condition


def _percent(value: float) -> str:
    text = _fmt(value, scale=100)
    return text if text == "—" else f"{text}%"


HEADERS = ["Strategy", "n", "Test acc % [95% CI]", "Val acc %", "Δ vs none, pp [95% CI]", "p (Holm)",
           "Epochs to 95% / 100%", "Reached 100%", "Speed-up (×)", "Reinit overhead (% of epoch)"]


def _figures(stem: str, cond: Condition, curves: pd.DataFrame, colors: dict) -> list[Figure]:
    arm_of = dict(zip(cond.runs["hash"], cond.runs["arm"], strict=True))
    sub = curves[curves["hash"].isin(arm_of)] if not curves.empty else curves
    made = [("curves", "Validation accuracy per epoch (mean, 95% t band over seeds)",
             plots.learning_curves(sub, arm_of, colors, cond.title)),
            ("fraction", "Test accuracy vs re-initialized fraction (mean, 95% CI); dashed: none",
             plots.fraction_plot(cond.runs, colors, cond.title)),
            ("plasticity", "Plasticity metrics tracked during training (mean, 95% band over seeds)",
             plots.plasticity_curves(sub, arm_of, colors, cond.title))]
    return [Figure(f"report/figures/{stem}-{kind}.png", f"{cond.title}: {caption}", png)
            for kind, caption, png in made if png]


ENVIRONMENT_NOTE = (
    "One row per distinct software and hardware record of the finished runs (each run's final.json), with how "
    "many runs it produced; commit = replast's git commit, '-dirty' with uncommitted changes to its source; "
    "threads = PyTorch's intra-op threads; processes = ranks per run; — = not recorded (runs made before "
    "replast recorded it).")


def environment_blocks(table: pd.DataFrame) -> list[Block]:
    if table.empty:
        return []
    rows = [[str(v) for v in row] for row in table.itertuples(index=False)]
    return [Heading(2, "Software and hardware"), Paragraph(ENVIRONMENT_NOTE), Table(list(table.columns), rows)]


def _failures(failures: list[dict]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Failed and unfinished runs")]
    if not failures:
        return blocks + [Paragraph("None: every run finished.")]
    keys = ["hash", "status", "reason", "model", "data", "seed", "reinit.strategy"]
    rows = [[str(f.get(k, "")) for k in keys] for f in failures]
    return blocks + [Paragraph(f"Runs that did not finish: {len(failures)}. They are excluded from the tables above."),
                     Table(keys, rows)]


def document(out: Path, results: pd.DataFrame, curves: pd.DataFrame, failures: list[dict],
             conds: list[Condition], across: pd.DataFrame, environments: pd.DataFrame) -> list[Block]:
    name = study_name(out) or out.name
    finished = int((results.get("status", pd.Series(dtype=str)) == "finished").sum())
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    blocks: list[Block] = [
        Heading(1, f"Study report: {name}"),
        Paragraph(f"{len(results)} runs, {finished} finished, {len(failures)} not finished. Generated {stamp}."),
        Paragraph(METHODS), *overview_blocks(across)]
    arms = sorted({a for c in conds for a in c.table["arm"]}, key=lambda a: (a != BASELINE, a))
    colors = plots.arm_colors(arms)
    for stem, cond in zip(figure_stems([c.title for c in conds]), conds, strict=True):
        blocks += [Heading(2, cond.title), Paragraph(sentence(cond.table, cond.has_baseline)),
                   Table(HEADERS, table_rows(cond.table)), *_figures(stem, cond, curves, colors),
                   *layers.diagnosis_blocks(out, stem, cond.runs, colors, cond.title)]
    if not conds:
        blocks.append(Paragraph("No finished runs yet, so there is nothing to compare."))
    return blocks + environment_blocks(environments) + _failures(failures)


def render(out_dir: str | os.PathLike) -> list[Path]:
    """Write report.md and report.html (plus figures and summary CSVs) for a study's OUT directory."""
    out = Path(out_dir)
    results, curves, failures = _load(out)
    conds = conditions(results, curves)
    across = overview.overview(conds)
    environments = provenance.environments(results)
    blocks = document(out, results, curves, failures, conds, across, environments)
    figures = [b for b in blocks if isinstance(b, Figure)]
    for figure in figures:
        atomic_write(out / figure.path, lambda f, png=figure.png: f.write(png))
    # Figures of conditions that no longer exist would otherwise linger next to the new report.
    keep = {(out / f.path).name for f in figures}
    for stale in (out / "report" / "figures").glob("*.png"):
        if stale.name not in keep:
            stale.unlink()
    _write_tables(out, conds, across, environments)
    md = write_text(out / "report.md", to_markdown(blocks))
    html = write_text(out / "report.html", to_html(blocks, f"replast report: {study_name(out) or out.name}"))
    return [md, html]


def _write_tables(out: Path, conds: list[Condition], across: pd.DataFrame, environments: pd.DataFrame) -> None:
    summary = pd.concat([c.table.assign(condition=c.title) for c in conds], ignore_index=True) if conds else pd.DataFrame()
    runs = pd.concat([c.runs for c in conds], ignore_index=True) if conds else pd.DataFrame()
    write_text(out / "report" / "summary.csv", summary.to_csv(index=False))
    write_text(out / "report" / "runs.csv", runs.to_csv(index=False))
    write_text(out / "report" / "overview.csv", across.to_csv(index=False))
    write_text(out / "report" / "environments.csv", environments.to_csv(index=False))
