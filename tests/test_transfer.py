"""replast.transfer and replast.backends: batched host reads, host-to-device copies, one-shot passes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from replast.transfer import host_to_device, host_values


def test_host_values_are_the_scalars_in_order():
    values = [torch.tensor(1.5), torch.tensor(True), torch.tensor(7, dtype=torch.int64), torch.ones(3).sum()]
    assert host_values(values) == [1.5, 1.0, 7.0, 3.0]
    assert host_values([]) == []
    assert host_values([torch.tensor(2**24 + 1)]) == [2**24 + 1]  # a count float32 would round


def test_host_to_device_on_cpu_is_an_exact_copy():
    t = torch.arange(6).reshape(2, 3)
    moved = host_to_device(t, "cpu")
    assert torch.equal(moved, t) and moved.device.type == "cpu"


def test_one_shot_passes_run_without_cudnn_autotuning_and_restore_it():
    """Utility and diagnosis passes run once: no cuDNN benchmark trials there, training's setting kept."""
    from torch import nn

    from replast.diagnosis import diagnose
    from replast.reinit import restore_plasticity

    seen = []
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    model[0].register_forward_hook(lambda *_: seen.append(torch.backends.cudnn.benchmark))
    batches = [(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 0, 1]))]
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        restore_plasticity(model, batches, strategy="targeted", utility="taylor", exclude=("3",), batches=1)
        diagnose(model, batches, num_batches=1)
        assert seen and not any(seen)
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = previous


_RSS_AFTER_FREE = """
import torch
from replast.backends import keep_freed_host_memory
print(keep_freed_host_memory())
x = torch.ones(64 * 2**20)  # 256 MiB, every page touched
del x
rss_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS"))
print(rss_kib // 1024)
"""


def _rss_after_free(env_extra: dict[str, str]) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env_extra
    out = subprocess.run([sys.executable, "-c", _RSS_AFTER_FREE], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], int(out[1])


def test_freed_host_memory_is_kept_for_reuse_unless_the_user_tuned_malloc():
    """glibc unmaps a freed 256 MiB block at once (the next batch pays page faults again); kept here."""
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    set_here, kept_mib = _rss_after_free({})
    left_alone, returned_mib = _rss_after_free({"MALLOC_ARENA_MAX": "2"})
    assert (set_here, left_alone) == ("True", "False")
    assert kept_mib - returned_mib > 200


def _dispatched(fn) -> int:
    """How many aten operations `fn()` dispatches (each one a kernel launch on a GPU, or more)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


def test_host_reads_take_a_fixed_number_of_operations_however_many_values():
    """A re-initialization reads hundreds of values (norms, counts, stats): no launch per value."""
    from replast.reinit.rows import param_norms

    def mixed(n):
        return [torch.tensor(float(i)) for i in range(n)] + [torch.tensor(i) for i in range(n)]

    few, many = mixed(3), mixed(300)
    assert _dispatched(lambda: host_values(few)) == _dispatched(lambda: host_values(many)) < 10
    params = {f"w{i}": torch.full((4, 3), float(i)) for i in range(200)}
    assert _dispatched(lambda: param_norms(params, list(params))) < 2 * len(params)
    assert param_norms(params, ["w0", "w2"]) == {"w0": 0.0, "w2": pytest.approx(2 * 12 ** 0.5)}
