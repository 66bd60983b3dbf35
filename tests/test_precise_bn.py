"""PreciseBN (`--train.precise_bn K`): before every evaluation the trained BatchNorms' statistics are
re-estimated on K un-augmented training batches in a seeded random order; a linear probe's (its model stays
in eval mode) are left alone."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from replast.checkpoint import load_checkpoint
from replast.loading import first_batches, load_model_and_data
from replast.precise_bn import trained_channels
from replast.reinit.bn_stats import batch_norms, recompute
from replast.train import set_train_mode


def _trained(run_dir) -> nn.Module:
    model, data = load_model_and_data("mobilenetv2_050", "synthetic", weights="none", image_size=32, seed=0)
    model.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"])
    return model, data


def test_the_evaluated_statistics_are_those_of_the_final_weights_on_the_training_batches(cli, tiny_run_args,
                                                                                        tmp_path):
    code, _, err = cli("finetune", *tiny_run_args, "--train.precise_bn", 2)
    assert code == 0, err
    model, data = _trained(tmp_path / "run")
    expected = copy.deepcopy(model)
    recompute(expected, first_batches(data, "train", 16, 2, seed=0), trained_channels(expected))
    saved, fresh = batch_norms(model), batch_norms(expected)
    assert len(saved) > 10
    for name, bn in saved.items():
        torch.testing.assert_close(bn.running_mean, fresh[name].running_mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn.running_var, fresh[name].running_var, rtol=1e-4, atol=1e-5)


def test_without_it_the_running_averages_of_training_are_evaluated(cli, tiny_run_args, tmp_path):
    code, _, err = cli("finetune", *tiny_run_args)
    assert code == 0, err
    model, data = _trained(tmp_path / "run")
    expected = copy.deepcopy(model)
    recompute(expected, first_batches(data, "train", 16, 2, seed=0), trained_channels(expected))
    name, bn = next(iter(batch_norms(model).items()))
    assert not torch.allclose(bn.running_mean, batch_norms(expected)[name].running_mean, rtol=1e-3)


def test_a_linear_probe_keeps_its_frozen_statistics(cli, tiny_run_args, tmp_path):
    torch.manual_seed(0)  # weights=none: the run draws its initial weights from the global generator
    code, _, err = cli("finetune", *tiny_run_args, "--train.precise_bn", 2, "--train.mode", "linear-probe")
    assert code == 0, err
    torch.manual_seed(0)
    initial, _ = load_model_and_data("mobilenetv2_050", "synthetic", weights="none", image_size=32, seed=0)
    model, _ = _trained(tmp_path / "run")
    for name, bn in batch_norms(model).items():
        assert torch.equal(bn.running_mean, batch_norms(initial)[name].running_mean), name
    assert trained_channels(model, linear_probe=True) == {}


def test_batchnorms_without_affine_parameters_are_re_estimated_too():
    """Training moves their statistics like any other's; only a linear probe (all in eval mode) keeps them."""
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, affine=False), nn.BatchNorm2d(4))
    assert sorted(trained_channels(model)) == ["1", "2"]
    assert trained_channels(model, linear_probe=True) == {}


def test_a_linear_probe_computes_its_features_as_in_evaluation():
    """Dropout off and BatchNorm statistics fixed everywhere, whatever the model's nesting; a containing
    Sequential whose own parameters train does not put its children back in training mode."""
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)), nn.Dropout(0.5), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    set_train_mode(model, linear_probe=True)
    assert not any(m.training for m in model.modules())
    set_train_mode(model, linear_probe=False)
    assert all(m.training for m in model.modules())


def test_posthoc_re_evaluation_reproduces_the_reported_test_accuracy(cli, tiny_run_args, tmp_path, benchmark):
    """benchmarks/bn_posthoc.py corrects finished runs by re-estimating statistics on the final weights;
    training never reads them, so on a run made with today's PreciseBN it must give the reported number."""
    bn_posthoc = benchmark("bn_posthoc")
    code, _, err = cli("finetune", *tiny_run_args, "--train.precise_bn", 2, "--epochs", 2)
    assert code == 0, err
    row = bn_posthoc.posthoc(tmp_path / "run")
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert row["test_acc_un_augmented"] == pytest.approx(final["test_acc"], abs=1e-6)
    assert row["test_acc_augmented"] != row["test_acc_un_augmented"]  # the protocols differ here
    # the saved statistics are read before any recompute, whatever order the protocols are asked in
    asked_last = bn_posthoc.posthoc(tmp_path / "run", ("augmented", "as_saved"))
    assert asked_last["test_acc_as_saved"] == row["test_acc_as_saved"]
    batches = bn_posthoc.augmented_batches(_trained(tmp_path / "run")[1], 16, 7, seed=0, augment=True)
    assert len(batches) == 7 and all(len(y) == 16 for _, y in batches)  # more than one epoch's worth


def test_a_one_image_last_batch_is_left_out_instead_of_crashing(cli, tiny_run_args, tmp_path):
    """33 training images in batches of 16: the third batch holds one image, whose 1x1 feature maps
    (32 px through MobileNetV2) BatchNorm cannot normalize in training mode (ValueError, a traceback)."""
    code, _, err = cli("finetune", *tiny_run_args, "--max_samples", 45, "--train.precise_bn", 3,
                       "--reinit.strategy", "targeted", "--reinit.utility", "magnitude", "--reinit.batches", 3)
    assert code == 0, err
    model, data = load_model_and_data("mobilenetv2_050", "synthetic", weights="none", image_size=32, seed=0,
                                      max_samples=45)
    model.load_state_dict(load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"])
    batches = first_batches(data, "train", 16, 3, seed=0)
    assert [len(y) for _, y in batches] == [16, 16, 1]
    expected = copy.deepcopy(model)
    assert recompute(expected, batches, trained_channels(expected)) == 2
    for name, bn in batch_norms(model).items():
        torch.testing.assert_close(bn.running_var, batch_norms(expected)[name].running_var, rtol=1e-4, atol=1e-5)
