"""BatchNorm statistics after a re-initialization: stale channels re-estimated on the utility batches (known
answers), every other channel and buffer kept, the batches read once, and bad input refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from replast.errors import ConfigError
from replast.reinit import restore_plasticity
from replast.reinit.bn_stats import changed_channels


def _model() -> nn.Sequential:
    """conv(3→4)→BN→ReLU→conv(4→5)→BN→ReLU→pool→head, BN statistics away from the data's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
            bn.num_batches_tracked.fill_(1000)
    return model.eval()


def _batches(n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 3, (6,), generator=g)) for _ in range(n)]


def _expected_stats(model: nn.Sequential, data: list, upto: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over batches of the batch mean and unbiased variance of BN `upto`'s input, with every BN before
    it normalizing by its batch statistics (train mode), as a BatchNorm pass with momentum None computes."""
    means, variances = [], []
    with torch.no_grad():
        for x, _ in data:
            h = x
            for module in model[:upto]:
                h = nn.functional.batch_norm(h, None, None, module.weight, module.bias, training=True) \
                    if isinstance(module, nn.BatchNorm2d) else module(h)
            means.append(h.mean((0, 2, 3)))
            variances.append(h.transpose(0, 1).flatten(1).var(1, unbiased=True))
    return torch.stack(means).mean(0), torch.stack(variances).mean(0)


def test_stale_statistics_are_re_estimated_from_the_new_weights_on_the_batches():
    model, data = _model(), _batches()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = restore_plasticity(model, data, utility="magnitude", fraction=0.5, include=("0",))
    # every filter of conv 0 lost half its weights: both BNs downstream see new inputs
    assert report.bn_recomputed == {"1": 4, "4": 5}
    for upto, bn in ((1, model[1]), (4, model[4])):
        mean, var = _expected_stats(model, data, upto)
        torch.testing.assert_close(bn.running_mean, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var, var, rtol=1e-5, atol=1e-6)
        assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 1000
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], before[n]) for n in params if not n.startswith("0."))
    assert report.to_dict()["bn_recomputed"] == {"1": 4, "4": 5} and report.bn_time_s > 0


def test_only_channels_downstream_of_a_change_are_re_estimated():
    """A reset in the second conv leaves the first BN (upstream) exactly as it was."""
    model = _model()
    first_bn = {k: v.clone() for k, v in model[1].state_dict().items()}
    report = restore_plasticity(model, _batches(), utility="magnitude", fraction=0.5, include=("3",))
    assert report.bn_recomputed == {"4": 5}
    assert all(torch.equal(v, first_bn[k]) for k, v in model[1].state_dict().items())


def test_without_recompute_every_buffer_is_kept_and_the_parameters_are_the_same():
    kept, recomputed = _model(), _model()
    buffers = {k: v.clone() for k, v in kept.named_buffers()}
    restore_plasticity(kept, _batches(), utility="taylor", fraction=0.3, recompute_bn=False)
    restore_plasticity(recomputed, _batches(), utility="taylor", fraction=0.3)
    assert all(torch.equal(v, buffers[k]) for k, v in kept.named_buffers())
    assert all(torch.equal(a, b) for a, b in zip(kept.parameters(), recomputed.parameters(), strict=True))
    assert not torch.equal(recomputed[4].running_mean, buffers["4.running_mean"])


def test_a_one_shot_generator_feeds_both_the_utility_and_the_batchnorm_pass():
    model, data = _model(), _batches()
    report = restore_plasticity(model, (b for b in data), utility="taylor", fraction=0.5, include=("0",))
    assert report.n_batches == 3
    mean, _ = _expected_stats(model, data, 4)
    torch.testing.assert_close(model[4].running_mean, mean, rtol=1e-5, atol=1e-6)


def test_changed_channels_compares_sums_and_sums_of_squares_known_answers():
    """[sum, sum of squares] per channel: a channel changes when either moves by more than 1e-5 relative."""
    before = torch.tensor([[1.0, 2.0, 30.0, 0.0], [10.0, 20.0, 30.0, 0.0]], dtype=torch.float64)
    after = torch.tensor([[1.0, 2.0, 30.00003, 0.0], [10.0, 25.0, 30.0, 0.0]], dtype=torch.float64)
    # channel 1: same sum, larger sum of squares (changed); channel 2: 1e-6 relative noise (kept)
    out = changed_channels({"a": before, "same": before.clone(), "gone": before}, {"a": after, "same": before})
    assert list(out) == ["a"] and out["a"].tolist() == [False, True, False, False]
    zero_to_tiny = torch.zeros(2, 1, dtype=torch.float64), torch.full((2, 1), 1e-3, dtype=torch.float64)
    assert changed_channels({"z": zero_to_tiny[0]}, {"z": zero_to_tiny[1]})["z"].tolist() == [True]


def test_no_batch_for_the_statistics_is_a_clear_error_and_leaves_the_model_alone():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="recompute_bn=False"):
        restore_plasticity(model, [], utility="magnitude", fraction=0.5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    restore_plasticity(model, [], utility="magnitude", fraction=0.5, recompute_bn=False)  # needs no data


def test_an_error_in_the_batchnorm_pass_puts_back_the_edit_and_the_statistics():
    class FailsInTraining(nn.BatchNorm1d):
        def forward(self, x):
            if self.training:  # only the BatchNorm pass runs it in training mode
                raise ValueError("refused in training mode")
            return super().forward(x)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), FailsInTraining(8), nn.ReLU(), nn.Linear(8, 3)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="refused in training mode"):
        restore_plasticity(model, [(torch.randn(4, 12), torch.tensor([1, 0, 2, 1]))], utility="taylor",
                           fraction=0.5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model[2].momentum == 0.1 and not model[2].training


def test_a_model_without_batchnorm_reads_no_data_for_magnitude():
    def untouchable():
        raise AssertionError("the data was read")
        yield

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    report = restore_plasticity(model, untouchable(), utility="magnitude", fraction=0.5, exclude=("2",))
    assert report.n_reset > 0 and report.bn_recomputed == {}


@pytest.mark.parametrize("value", ["yes", 1.5, None])
def test_recompute_bn_must_be_true_or_false(value):
    with pytest.raises(ConfigError, match="recompute_bn"):
        restore_plasticity(_model(), _batches(), recompute_bn=value)
