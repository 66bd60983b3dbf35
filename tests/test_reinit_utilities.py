"""Known-answer tests for every utility: the pure formulas on a hand-computed layer, and the
statistics the utility pass collects (batch gradients of the cross-entropy, mean |activation|)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from replast.reinit import UTILITIES, utility_scores
from replast.reinit.collect import collect
from replast.reinit.utilities import LayerStats

W = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
STATS = LayerStats(
    weight=W,
    grad_abs=torch.tensor([[0.1, 0.2], [0.3, 0.0]]),
    grad_sq=torch.tensor([[0.02, 0.04], [0.1, 0.0]]),
    act=torch.tensor([2.0, 0.0, 1.0]),
    out_abs=torch.tensor([1.0, 5.0, 3.0]),
)
EXPECTED = {
    "magnitude": torch.tensor([[1.0, 2.0], [0.5, 4.0]]),
    "gradient": torch.tensor([[0.1, 0.2], [0.3, 0.0]]),
    "taylor": torch.tensor([[0.1, 0.4], [0.15, 0.0]]),
    "fisher": torch.tensor([[0.01, 0.08], [0.0125, 0.0]]),
    "snip": torch.tensor([[0.1, 0.4], [0.15, 0.0]]),  # taylor's values; `global` ranks them unnormalized
    "activation": torch.tensor([2.0, 0.0, 1.0]),
    "redo": torch.tensor([2.0, 0.0, 1.0]),  # layer mean is 1
    "cbp": torch.tensor([2.0, 0.0, 3.0]),
    "random": torch.rand((2, 2), generator=torch.Generator().manual_seed(7)),
}


def test_every_registered_utility_has_a_known_answer() -> None:
    assert set(EXPECTED) == set(UTILITIES.names())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_utility_formula(name: str) -> None:
    scores = UTILITIES.get(name).fn(STATS, torch.Generator().manual_seed(7))
    torch.testing.assert_close(scores, EXPECTED[name])


def _linear_data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(5, 3, generator=g), torch.randint(0, 2, (5,), generator=g)) for _ in range(2)]


def _hand_gradients(layer: nn.Linear, data: list) -> list[torch.Tensor]:
    """dCE/dW = (softmax(Wx + b) − onehot(y))ᵀ x / B, per batch."""
    grads = []
    for x, y in data:
        p = torch.softmax(x @ layer.weight.detach().T + layer.bias.detach(), dim=1)
        grads.append((p - F.one_hot(y, 2).float()).T @ x / len(y))
    return grads


def test_gradient_statistics_of_the_utility_pass() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2))
    data = _linear_data()
    g1, g2 = _hand_gradients(model[0], data)
    w = model[0].weight.detach()
    expected = {
        "gradient": (g1.abs() + g2.abs()) / 2,
        "taylor": w.abs() * (g1.abs() + g2.abs()) / 2,
        "fisher": 0.5 * (g1.square() + g2.square()) / 2 * w.square(),
    }
    for name, value in expected.items():
        torch.testing.assert_close(utility_scores(model, data, name, exclude=())["0"], value)


def _tied_mlp() -> nn.Sequential:
    """Layers 3 and 5 hold one weight (tied)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Identity(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4),
                          nn.Tanh(), nn.Linear(4, 2))
    model[5].weight = model[3].weight
    return model


def _gradient_of_both_uses(model: nn.Sequential, data: list) -> torch.Tensor:
    """E_b |g_b| of the tied weight, g_b summing the gradients of both uses."""
    total = torch.zeros_like(model[3].weight)
    for x, y in data:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        total += model[3].weight.grad.abs() / len(data)
    model.zero_grad()
    assert total.min() > 0
    return total


def test_a_tied_weight_is_one_layer_scored_on_the_gradient_of_both_uses() -> None:
    model, data = _tied_mlp(), _linear_data()
    expected = _gradient_of_both_uses(model, data)
    scores = utility_scores(model, data, "gradient")
    assert list(scores) == ["0", "3"]  # "5" is the tied weight's other name; "7" the head
    torch.testing.assert_close(scores["3"], expected)


def test_a_weight_listed_under_two_names_gets_its_gradient_under_both() -> None:
    model, data = _tied_mlp(), _linear_data()
    expected = _gradient_of_both_uses(model, data)
    stats = collect(model, data, {"3": model[3].weight, "5": model[5].weight}, {}, True, len(data))
    torch.testing.assert_close(stats.grad_abs["3"], expected)
    torch.testing.assert_close(stats.grad_abs["5"], expected)


def _mlp_and_data() -> tuple[nn.Sequential, list]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    g = torch.Generator().manual_seed(2)
    return model, [(torch.randn(4, 2, generator=g), torch.randint(0, 2, (4,), generator=g)) for _ in range(3)]


def test_activation_statistics_at_unit_level() -> None:
    model, data = _mlp_and_data()
    x = torch.cat([b[0] for b in data])
    act = torch.relu(model[0](x)).abs().mean(0).detach()
    out_abs = model[2].weight.detach().abs().sum(0)
    expected = {"activation": act, "redo": act / act.mean(), "cbp": act * out_abs}
    for name, value in expected.items():
        torch.testing.assert_close(utility_scores(model, data, name, level="unit")["0"], value)


def test_unit_scores_broadcast_to_weights_and_weight_scores_average_into_units() -> None:
    model, data = _mlp_and_data()
    unit = utility_scores(model, data, "activation", level="unit")["0"]
    weight = utility_scores(model, data, "activation", level="weight")["0"]
    torch.testing.assert_close(weight, unit[:, None].expand(3, 2))
    magnitude = utility_scores(model, data, "magnitude", level="unit")["0"]
    torch.testing.assert_close(magnitude, model[0].weight.detach().abs().mean(1))


def test_unpaired_layer_reads_activations_at_its_own_output() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    data = [(torch.randn(2, 3, 5, 5), torch.tensor([0, 1]))]
    expected = model[0](data[0][0]).detach().abs().mean((0, 2, 3))
    scores = utility_scores(model, data, "activation", level="unit")["0"]  # fell back: weight-shaped
    torch.testing.assert_close(scores, expected[:, None, None, None].expand(4, 3, 3, 3))


def test_attention_heads_are_units() -> None:
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=16,
                            patch_size=8, depth=1)
    data = [(torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))]
    captured = {}
    handle = vit.blocks[0].attn.proj.register_forward_pre_hook(lambda m, a: captured.update(x=a[0].detach()))
    scores = utility_scores(vit, data, "activation", level="unit")
    handle.remove()
    heads = vit.blocks[0].attn.num_heads
    expected = captured["x"].abs().reshape(-1, heads, 192 // heads).mean((0, 2))
    torch.testing.assert_close(scores["blocks.0.attn.qkv"], expected)
    assert scores["blocks.0.mlp.fc1"].shape == (768,)
