"""Shared test set-up: one torch thread per test process (pytest -n 2 runs two on two cores), seeded draws."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny tensors: extra OpenMP threads only add synchronisation (and over-subscribe a shared machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)  # every test sees the same global draws, whatever ran before it
