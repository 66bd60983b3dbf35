"""`--reinit.schedule every:K` during fine-tuning: re-applied on schedule, last application's entries protected."""

from __future__ import annotations

import json

import replast.reinit.continual as schedule


def test_every_k_reapplies_with_the_previous_masks_protected(cli, tiny_run_args, tmp_path, monkeypatch) -> None:
    calls = []
    real = schedule.restore_plasticity

    def spy(*args, **options):
        report = real(*args, **options)
        calls.append((options["protect"], report.reset_masks))
        return report

    monkeypatch.setattr(schedule, "restore_plasticity", spy)
    code, _, err = cli("finetune", *tiny_run_args, "--reinit.strategy", "cbp", "--reinit.fraction", "0.2",
                       "--reinit.schedule", "every:4")
    assert code == 0, err
    events = json.loads((tmp_path / "run" / "final.json").read_text())["reinit_events"]
    assert [e["step"] for e in events] == [4 * (i + 1) for i in range(len(events))] and len(events) >= 2
    assert all(e["n_reset"] > 0 for e in events) and len(calls) == len(events)
    assert any(mask.any() for mask in calls[0][0].values())  # the reset before training
    for (protect, _), (_, previous) in zip(calls[1:], calls, strict=False):
        assert protect is previous


def test_every_k_protects_nothing_for_other_strategies(cli, tiny_run_args, monkeypatch) -> None:
    protects = []
    real = schedule.restore_plasticity

    def spy(*args, **options):
        protects.append(options["protect"])
        return real(*args, **options)

    monkeypatch.setattr(schedule, "restore_plasticity", spy)
    code, _, err = cli("finetune", *tiny_run_args, "--reinit.strategy", "shrink-perturb", "--reinit.schedule", "every:4")
    assert code == 0, err
    assert protects and all(p is None for p in protects)  # whole-network strategies re-apply in full every time


def test_every_k_reuses_the_layers_scope_auto_chose(cli, tiny_run_args, tmp_path, monkeypatch) -> None:
    scopes = []
    real = schedule.restore_plasticity

    def spy(*args, **options):
        scopes.append(options["scope"])
        return real(*args, **options)

    monkeypatch.setattr(schedule, "restore_plasticity", spy)
    code, _, err = cli("finetune", *tiny_run_args, "--reinit.strategy", "targeted", "--reinit.scope", "auto",
                       "--reinit.schedule", "every:4")
    assert code == 0, err
    chosen = json.loads((tmp_path / "run" / "autoscope.json").read_text())["fractions"]
    assert scopes and all(scope == chosen for scope in scopes)
