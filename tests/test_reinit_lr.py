"""UpdateScaler (k× the update of reset entries, for SGD and AdamW), clear_optimizer_state, AdamAges (a reset
entry's own Adam step count), schedules."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from replast.errors import ConfigError
from replast.reinit import AdamAges, ReinitSchedule, UpdateScaler, clear_optimizer_state, restore_plasticity

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.05),
}


def _setup(kind: str) -> tuple[nn.Module, torch.optim.Optimizer, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    masks = {"0.weight": torch.rand(5, 4) < 0.4, "0.bias": torch.tensor([True, False, False, True, False])}
    return model, OPTIMIZERS[kind](model.parameters()), masks


def _grads(model: nn.Module, step: int) -> None:
    g = torch.Generator().manual_seed(step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
@pytest.mark.parametrize("use_context", [True, False])
def test_update_of_reset_entries_is_exactly_k_times(kind: str, use_context: bool) -> None:
    plain_model, plain_opt, masks = _setup(kind)
    model, opt, _ = _setup(kind)
    scaler = UpdateScaler(opt, masks, scale=4.0, model=model)
    for step in range(3):  # the states match before each step: compare one step from equal states
        model.load_state_dict(plain_model.state_dict())
        opt.load_state_dict(copy.deepcopy(plain_opt.state_dict()))  # Adam shares "step" otherwise
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        _grads(plain_model, step), _grads(model, step)
        plain_opt.step()
        if use_context:
            with scaler:
                opt.step()
        else:
            scaler.step()
        for (name, p), plain in zip(model.named_parameters(), plain_model.parameters(), strict=True):
            update, plain_update = p.detach() - before[name], plain.detach() - before[name]
            mask = masks.get(name, torch.zeros_like(p, dtype=torch.bool))
            torch.testing.assert_close(update[mask], 4.0 * plain_update[mask], rtol=1e-5, atol=1e-7)
            assert torch.equal(p.detach()[~mask], plain.detach()[~mask])
    assert scaler.steps == 3


def test_warmup_ramps_linearly_to_k() -> None:
    model, opt, masks = _setup("sgd")
    scaler = UpdateScaler(opt, masks, scale=5.0, warmup_steps=4, model=model)
    factors = []
    for _ in range(6):
        factors.append(scaler.factor())
        _grads(model, 0)
        scaler.step()
    assert factors == [2.0, 3.0, 4.0, 5.0, 5.0, 5.0]
    assert UpdateScaler(opt, masks, scale=5.0, model=model).factor() == 5.0
    resumed = UpdateScaler(opt, masks, scale=5.0, warmup_steps=4, model=model)
    resumed.load_state_dict(scaler.state_dict())
    assert resumed.factor() == 5.0


def test_failed_step_is_not_scaled_or_counted() -> None:
    model, opt, masks = _setup("sgd")
    scaler = UpdateScaler(opt, masks, scale=3.0, model=model)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError), scaler:
        raise RuntimeError("nan loss")
    assert scaler.steps == 0 and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_masks_from_a_report_and_bad_masks() -> None:
    model, opt, _ = _setup("adamw")
    data = [(torch.randn(3, 4), torch.tensor([0, 1, 2]))]
    report = restore_plasticity(model, data, utility="magnitude", fraction=0.5)
    scaler = UpdateScaler(opt, report, scale=2.0, model=model)
    assert [p.shape for p in scaler.masks] == [torch.Size([5, 4])]
    params = dict(model.named_parameters())
    assert len(UpdateScaler(opt, {params["0.weight"]: report.masks["0.weight"]}, 2.0).masks) == 1
    with pytest.raises(ConfigError, match="pass model"):
        UpdateScaler(opt, report.masks, 2.0)
    with pytest.raises(ConfigError, match="does not have"):
        UpdateScaler(opt, {"nope.weight": torch.ones(1, dtype=torch.bool)}, 2.0, model=model)
    with pytest.raises(ConfigError):
        UpdateScaler(opt, report.masks, 0.0, model=model)
    with pytest.raises(ConfigError, match="warmup_steps=-1"):
        UpdateScaler(opt, report.masks, 2.0, warmup_steps=-1, model=model)


@pytest.mark.parametrize("scale", [math.nan, math.inf])
def test_a_scale_that_is_not_a_finite_number_is_a_config_error(scale: float) -> None:
    model, opt, masks = _setup("sgd")
    with pytest.raises(ConfigError, match=f"scale={scale}"):
        UpdateScaler(opt, masks, scale, model=model)


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_clear_optimizer_state_zeroes_reset_entries_only(kind: str) -> None:
    model, opt, masks = _setup(kind)
    for step in range(2):
        _grads(model, step)
        opt.step()
    before = copy.deepcopy(opt.state_dict())
    touched = clear_optimizer_state(opt, masks, model=model)
    assert touched == (2 if kind == "sgd" else 4)  # momentum_buffer | exp_avg + exp_avg_sq, per param
    params = dict(model.named_parameters())
    for name, p in params.items():
        mask = masks.get(name, torch.zeros_like(p, dtype=torch.bool))
        index = list(params).index(name)
        for key, value in opt.state[p].items():
            if isinstance(value, torch.Tensor) and value.shape == p.shape:
                old = before["state"][index][key]
                assert not value[mask].any() and torch.equal(value[~mask], old[~mask]), (name, key)


def test_schedule_parse() -> None:
    once, every = ReinitSchedule.parse("once"), ReinitSchedule.parse("every:50")
    assert once.once and not any(once.due(s) for s in range(200))
    assert [s for s in range(160) if every.due(s)] == [50, 100, 150] and str(every) == "every:50"
    for bad in ("every:0", "every:", "sometimes", "every:-3"):
        with pytest.raises(ConfigError):
            ReinitSchedule.parse(bad)


ADAMS = {
    "adam": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-3),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.05),
    "adamw-amsgrad": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.05, amsgrad=True),
}


def _reset_after_five_steps(make) -> tuple[nn.Module, torch.optim.Optimizer, dict[str, torch.Tensor]]:
    """A Linear trained 5 steps by `make(params)`, then some entries rewritten and their moments cleared."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = make(model.parameters())
    for step in range(5):
        _grads(model, step)
        opt.step()
    masks = {"weight": torch.rand(3, 4) < 0.5, "bias": torch.tensor([True, False, True])}
    with torch.no_grad():
        for name, p in model.named_parameters():
            p[masks[name]] = torch.randn(int(masks[name].sum()))
    clear_optimizer_state(opt, masks, model=model)
    return model, opt, masks


def _four_more_steps(model, opt, masks, others: list[tuple[nn.Module, torch.optim.Optimizer]]) -> None:
    """Steps 5..8 with AdamAges around `opt`; every other (model, optimizer) takes the same gradients."""
    ages = AdamAges(opt)
    ages.mark(masks, model=model)
    for step in range(5, 9):
        for m in (model, *(m for m, _ in others)):
            _grads(m, step)
        ages.begin()
        opt.step()
        ages.finish()
        for _, o in others:
            o.step()


def _assert_reset_entries_follow(model, fresh_model, masks) -> None:
    for name, p in model.named_parameters():
        mask = masks[name]
        torch.testing.assert_close(p[mask], dict(fresh_model.named_parameters())[name][mask], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", sorted(ADAMS))
def test_entries_reset_during_training_follow_a_fresh_adam(kind: str) -> None:
    """After 5 steps some entries are rewritten and their moments cleared: from then on they must move exactly
    as under a new optimizer started at the reset, and every other entry exactly as before."""
    model, opt, masks = _reset_after_five_steps(ADAMS[kind])
    fresh_model, plain_model = copy.deepcopy(model), copy.deepcopy(model)
    fresh, plain = ADAMS[kind](fresh_model.parameters()), ADAMS[kind](plain_model.parameters())
    plain.load_state_dict(copy.deepcopy(opt.state_dict()))
    _four_more_steps(model, opt, masks, [(fresh_model, fresh), (plain_model, plain)])
    _assert_reset_entries_follow(model, fresh_model, masks)
    for name, p in model.named_parameters():
        assert torch.equal(p[~masks[name]], dict(plain_model.named_parameters())[name][~masks[name]]), name


def test_adam_ages_follow_adamw_of_torch_before_2_7(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch 2.4-2.6 (supported) has an AdamW that is not an Adam and whose groups have no
    `decoupled_weight_decay`: its reset entries must still follow a fresh AdamW."""
    real = torch.optim.AdamW

    class OldAdamW(torch.optim.Optimizer):  # that AdamW: the same update, another class, no such key
        def __init__(self, params, **kw) -> None:
            self.inner = real(params, **kw)
            for g in self.inner.param_groups:
                del g["decoupled_weight_decay"]
            self.__dict__.update({k: v for k, v in self.inner.__dict__.items() if k != "inner"})

        def step(self, closure=None):
            for g in self.param_groups:
                g["decoupled_weight_decay"] = True
            try:
                return self.inner.step(closure)
            finally:
                for g in self.param_groups:
                    del g["decoupled_weight_decay"]

    monkeypatch.setattr(torch.optim, "AdamW", OldAdamW)
    model, opt, masks = _reset_after_five_steps(lambda p: OldAdamW(p, lr=0.01, weight_decay=0.05))
    assert not isinstance(opt, torch.optim.Adam)
    fresh_model = copy.deepcopy(model)
    fresh = real(fresh_model.parameters(), lr=0.01, weight_decay=0.05)
    _four_more_steps(model, opt, masks, [(fresh_model, fresh)])
    _assert_reset_entries_follow(model, fresh_model, masks)


def test_adam_ages_leave_other_optimizers_and_skipped_steps_alone() -> None:
    model, sgd, masks = _setup("sgd")
    ages = AdamAges(sgd)
    ages.mark(masks, model=model)
    assert ages.born == {}
    model, adamw, masks = _setup("adamw")
    _grads(model, 0)
    adamw.step()
    ages = AdamAges(adamw)
    ages.mark(masks, model=model)
    before = [p.detach().clone() for p in model.parameters()]
    ages.begin()  # an fp16 step skipped for an overflow: the step count does not move, nothing is redone
    ages.finish()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_continual_resumes_with_the_step_counts_of_reset_entries() -> None:
    from replast.reinit.continual import Continual

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    options = {"strategy": "targeted", "utility": "random", "fraction": 0.3, "schedule": "every:2",
               "exclude": (), "seed": 0}

    def train(continual: Continual, net: nn.Module, steps: range) -> None:
        for step in steps:
            _grads(net, step)
            continual.step()
            continual.after_step(step + 1)

    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    continual = Continual(model, opt, batches, None, options)
    train(continual, model, range(3))  # a reset after step 2
    assert continual.ages.born and continual.events
    resumed_model = copy.deepcopy(model)
    resumed_opt = torch.optim.AdamW(resumed_model.parameters(), lr=0.01)
    resumed_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    resumed = Continual(resumed_model, resumed_opt, batches, None, options)
    resumed.load_state_dict(copy.deepcopy(continual.state_dict()))
    train(continual, model, range(3, 6))
    train(resumed, resumed_model, range(3, 6))
    for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_scaled_update_of_entries_reset_during_training_is_k_times_a_fresh_adams() -> None:
    """every:K with --reinit.lr_scale k under AdamW: the step after a reset moves the reset entries by exactly k
    times what a new AdamW would, both corrections working from one copy of the parameters."""
    from replast.reinit.continual import Continual

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    options = {"strategy": "targeted", "utility": "random", "fraction": 0.3, "schedule": "every:2",
               "lr_scale": 3.0, "exclude": (), "seed": 0}
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.05)
    continual = Continual(model, opt, batches, None, options)
    for step in range(2):
        _grads(model, step)
        continual.step()
        continual.after_step(step + 1)  # re-applied after the second step
    masks = dict(continual.masks)
    assert continual.events and any(m.any() for m in masks.values())
    fresh_model = copy.deepcopy(model)
    fresh = torch.optim.AdamW(fresh_model.parameters(), lr=0.01, weight_decay=0.05)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for net in (model, fresh_model):
        _grads(net, 2)
    continual.before_update()
    assert all(continual.scaler._old[p] is continual.ages._old[p][0] for p in continual.ages.born)
    opt.step()
    continual.after_update()
    fresh.step()
    for name, p in model.named_parameters():
        mask = masks.get(name, torch.zeros_like(p, dtype=torch.bool))
        expected = before[name] + 3.0 * (dict(fresh_model.named_parameters())[name] - before[name])
        torch.testing.assert_close(p[mask], expected[mask], rtol=1e-6, atol=1e-7)
