"""`restore_plasticity(model, batches, ...)`: re-initialize a targeted subset of a model, in place.

    report = restore_plasticity(model, train_batches, strategy="targeted", utility="taylor",
                                selection="per-layer", fraction=0.1, scheme="init")
Options and batches are validated before the model is touched, and an error after the first write puts
back everything written; returns a ReinitReport (rows, masks, timings).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from time import perf_counter
from typing import Any

import torch
from torch import Tensor, nn

from replast.errors import ConfigError
from replast.reinit import bn_stats, distributed, strategies, utilities  # noqa: F401  (they register)
from replast.reinit.edits import apply_edits, expand
from replast.reinit.engine import Replay, Scored, checked, generators, score
from replast.reinit.init_rules import family_of
from replast.reinit.options import Options, make_options, validate
from replast.reinit.registry import SCHEMES, SELECTIONS, STRATEGIES
from replast.reinit.report import ReinitReport
from replast.reinit.rows import build_rows, param_norms
from replast.reinit.selection import SelectionInput
from replast.reinit.target import Target, resolve_target
from replast.reinit.units import group_by_unit


def restore_plasticity(
    model: nn.Module, data: Iterable, /, strategy: str = "targeted", utility: str = "taylor",
    selection: str = "per-layer", fraction: float = 0.1, scheme: str = "init",
    exclude: str | Sequence[str] = ("head",), seed: int = 0, *, threshold: float = 0.1, layers: int = 1,
    level: str = "weight", zero_outgoing: bool = False, unpaired: str = "weight", batches: int = 8, shrink: float = 0.4,
    perturb: float = 0.1, scope: str | Mapping[str, float] = "all", include: str | Sequence[str] = (),
    recompute_bn: bool = True, protect: Mapping[str, Tensor] | None = None, **options: Any,
) -> ReinitReport:
    """Re-initialize part of `model` in place and report what changed.

    `data` yields (x, y) batches on any device (only the first `batches` are read, once, and only when the
    utility, unit pairing or BatchNorm statistics need them). With `recompute_bn`, BatchNorm channels whose
    input the edit changed get running statistics re-estimated on those batches (`bn_stats`). Keyword names
    are the fields of ReinitConfig, so `restore_plasticity(model, loader, **asdict(cfg.reinit))` works;
    lr_scale, lr_warmup_steps and schedule are accepted and ignored here (`Continual` runs them during
    training). The model's train/eval modes and requires_grad flags are restored and its gradients cleared.
    `protect` ({param name: bool mask}, e.g. an earlier report's `.reset_masks`) keeps those entries from
    being chosen (a unit: when its incoming rows were reset); cbp's `every:K` passes the previous
    application's (CBP's maturity).
    """
    opts = make_options(
        strategy=strategy, utility=utility, selection=selection, fraction=fraction, scheme=scheme, exclude=exclude,
        seed=seed, threshold=threshold, layers=layers, level=level, zero_outgoing=zero_outgoing, unpaired=unpaired,
        batches=batches, shrink=shrink, perturb=perturb, scope=scope, include=include, recompute_bn=recompute_bn, **options)
    plan = STRATEGIES.get(opts.strategy)(opts)
    if plan is None or (isinstance(plan.scope, Mapping) and not plan.scope):
        return ReinitReport(opts.strategy, opts.to_dict())  # auto-scope chose no layer: do no harm
    return _run(model, data, validate(plan), protect or {})


def utility_scores(model: nn.Module, data: Iterable, utility: str = "taylor", *, level: str = "weight",
                   batches: int = 8, exclude: str | Sequence[str] = ("head",),
                   include: str | Sequence[str] = (), seed: int = 0) -> dict[str, Tensor]:
    """Scores of every eligible layer without changing it ({layer name: scores}; low = candidate)."""
    o = make_options(utility=utility, level=level, batches=batches, exclude=exclude, include=include, seed=seed)
    target = resolve_target(model, o)
    scored, _ = score(model, data, target, o, generators(seed)[0])
    return dict(zip(target.layers, scored.scores, strict=True))


def _eligible(target: Target, scored: Scored, protect: Mapping[str, Tensor]) -> list[Tensor] | None:
    """Per layer, the entries (or units) that `protect` leaves selectable; None when it protects nothing."""
    if not any(f"{n}.weight" in protect for n in target.layers):
        return None
    out = []
    for name, scores in zip(target.layers, scored.scores, strict=True):
        mask = protect.get(f"{name}.weight")
        if mask is None:
            out.append(torch.ones_like(scores, dtype=torch.bool))
            continue
        mask = mask.to(scores.device)
        if scored.levels[name] == "unit":  # a unit's rows reset whole (zeroed outgoing columns do not count)
            um = scored.unit_maps[name]
            mask = group_by_unit(mask.flatten(1).all(1).float(), um.rows, um.n_units, reduce="sum") > 0
        out.append(~mask)
    return out


def _select(target: Target, scored: Scored, o: Options, protect: Mapping[str, Tensor]) -> list[Tensor]:
    """Masks of every target layer; skipped layers (unpaired='skip') take no part, so `global` ranks the rest."""
    kept = [i for i, n in enumerate(target.layers) if n not in scored.skipped]

    def only_kept(per_layer: Sequence[Any]) -> list[Any]:
        return [per_layer[i] for i in kept]

    eligible = _eligible(target, scored, protect)
    spec = SelectionInput(only_kept(target.fractions), o.fraction, o.threshold, o.layers, only_kept(target.blocks),
                          target.n_blocks, normalize_layers=not scored.utility.network_scale,
                          eligible=None if eligible is None else only_kept(eligible))
    # every selection, registered ones too, goes through `allowed`
    chosen = iter(spec.allowed(SELECTIONS.get(o.selection)(only_kept(scored.scores), spec)))
    return [torch.zeros_like(s, dtype=torch.bool) if n in scored.skipped else next(chosen)
            for n, s in zip(target.layers, scored.scores, strict=True)]


def _run(model: nn.Module, data: Iterable, o: Options, protect: Mapping[str, Tensor]) -> ReinitReport:
    start = perf_counter()
    data = Replay(data, o.batches)  # read once: the utility pass and the BatchNorm pass share the batches
    target = resolve_target(model, o)
    score_gen, value_gen = generators(o.seed)
    scored, seconds = score(model, data, target, o, score_gen)
    t_select = perf_counter()
    masks = _select(target, scored, o, protect)
    modules = dict(model.named_modules())
    edits = expand(target.layers, masks, scored.levels, scored.unit_maps, modules, o.zero_outgoing)
    params = dict(model.named_parameters())
    touched = [n for n in params if n in edits.reset or n in edits.zero] + [
        f"{bn}.{k}" for bn in edits.bn for k in ("weight", "bias") if f"{bn}.{k}" in params]
    wanted = {f"{n}.weight" for n in target.layers} | set(touched)
    watched = [n for n in params if n in wanted]
    before = param_norms(params, watched)
    probe = _probe_images(model, data) if o.recompute_bn and bn_stats.batch_norms(model) else None
    inputs_before = bn_stats.input_sums(model, probe) if probe is not None else {}
    with _undone_on_error(model, touched):
        written = apply_edits(model, edits, SCHEMES.get(o.scheme), o.shrink, o.perturb, family_of(model), value_gen)
        t_bn = perf_counter()
        stale = bn_stats.changed_channels(inputs_before, bn_stats.input_sums(model, probe)) if probe is not None else {}
        bn_stats.recompute(model, checked(model, data), stale)
    # every BatchNorm, in model order: the same list on every rank (which channels went stale is measured
    # on each rank's own images, and a set's order differs between processes)
    distributed.broadcast_from_rank0([params[n] for n in written] + bn_stats.running_stats(bn_stats.batch_norms(model).values()))
    end = perf_counter()
    report = ReinitReport(o.strategy, o.to_dict(), total_time_s=end - start,
                          utility_time_s=seconds["utility"], bn_time_s=end - t_bn,
                          select_time_s=seconds["scoring"] + (t_bn - t_select), n_batches=scored.n_batches,
                          bn_recomputed={n: int(m.sum()) for n, m in stale.items()})
    report.masks = {n: written.get(n, torch.zeros_like(params[n], dtype=torch.bool)) for n in watched}
    report.reset_masks = {n: edits.reset[n].expand_as(params[n]) for n in watched if n in edits.reset}
    report.rows = build_rows(target.layers, scored, o.level, report.masks, before, param_norms(params, watched),
                             edits.notes)
    return report


def _probe_images(model: nn.Module, data: Iterable) -> Tensor:
    """The first batch's images; every batch the BatchNorm pass will read is checked here, so that a bad
    one is a ConfigError before the edit, as it is when the utility pass reads them."""
    batches = checked(model, data)
    first = next(batches, None)
    if first is None:
        raise ConfigError("the batch iterable is empty; re-estimating BatchNorm statistics needs at least one "
                          "(x, y) batch (or pass recompute_bn=False)")
    for _ in batches:
        pass
    return first[0]


@contextmanager
def _undone_on_error(model: nn.Module, params: Sequence[str]) -> Iterator[None]:
    """On any exception, put back `params` and every BatchNorm buffer: all that the edit and the BatchNorm
    pass write, so that a failed call leaves the model as it was."""
    names = set(params)
    live = [p for n, p in model.named_parameters() if n in names] + [
        b for bn in bn_stats.batch_norms(model).values() for b in bn.buffers(recurse=False)]
    saved = [t.detach().clone() for t in live]
    try:
        yield
    except BaseException:
        with torch.no_grad():
            for tensor, value in zip(live, saved, strict=True):
                tensor.copy_(value)
        raise
