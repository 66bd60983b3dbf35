"""replast.transfer: batched device-to-host values and host-to-device copies give exactly the inputs."""

from __future__ import annotations

import torch

from replast.transfer import host_to_device, host_values


def test_host_values_are_the_scalars_in_order():
    values = [torch.tensor(1.5), torch.tensor(True), torch.tensor(7, dtype=torch.int64), torch.ones(3).sum()]
    assert host_values(values) == [1.5, 1.0, 7.0, 3.0]
    assert host_values([]) == []


def test_host_to_device_on_cpu_is_an_exact_copy():
    t = torch.arange(6).reshape(2, 3)
    moved = host_to_device(t, "cpu")
    assert torch.equal(moved, t) and moved.device.type == "cpu"
