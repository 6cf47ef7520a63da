"""common/distributed.py outside torchrun (the torchrun paths run in the sampling CLIs' 2-process tests)."""

import pytest
import torch

from common.distributed import launched_world_size, resolve_device, setup_distributed

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@pytest.fixture
def no_torchrun(monkeypatch):
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_a_plain_process_is_rank_zero_of_one(no_torchrun):
    setup = setup_distributed("cpu")
    assert (setup.rank, setup.world_size, setup.device, setup.initialized) == (0, 1, torch.device("cpu"), False)
    assert launched_world_size() == 1
    setup.barrier()  # no process group: both are no-ops rather than errors
    setup.close()


def test_world_size_is_read_from_torchrun_before_joining(no_torchrun, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert launched_world_size() == 1  # WORLD_SIZE alone is not a torchrun launch
    monkeypatch.setenv("RANK", "3")
    assert launched_world_size() == 8


@pytest.mark.parametrize(
    ("device_arg", "local_rank", "cuda_available", "expected"),
    [
        ("cuda", 3, True, "cuda:3"),  # index-less cuda under torchrun: this rank's GPU, not cuda:0 for all
        ("cuda", None, True, "cuda"),  # alone: the current device, as given
        ("cuda:1", 3, True, "cuda:1"),  # an explicit index is kept
        ("cpu", 3, True, "cpu"),
        (None, 2, True, "cuda:2"),
        (None, None, True, "cuda:0"),
        (None, 2, False, "cpu"),
    ],
)
def test_resolve_device(device_arg, local_rank, cuda_available, expected):
    assert resolve_device(device_arg, local_rank, cuda_available) == torch.device(expected)
