"""Shared test setup.

Every test runs with one intra-op torch thread: the suite runs on 2 shared cores (often as two
pytest-xdist workers), where multi-threaded kernels oversubscribe and crawl, and one thread gives
the same reduction order on every run (bit-exact comparisons rely on it).
"""

import pytest


@pytest.fixture(autouse=True)
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
