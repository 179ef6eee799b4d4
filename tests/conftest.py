"""Shared test setup.

Every test runs with one intra-op torch thread: the suite runs on 2 shared cores (often as two
pytest-xdist workers), where multi-threaded kernels oversubscribe and crawl, and one thread gives
the same reduction order on every run (bit-exact comparisons rely on it).
Property tests (hypothesis) run without deadlines (see below).
"""

import pytest
from hypothesis import HealthCheck, settings

# Timing is not behaviour: on a shared 2-core machine one example can take longer than hypothesis'
# 200 ms default deadline or trip its too-slow health check, which fails a correct test at random.
# Speed targets live in benchmarks/, so property tests run without either.
settings.register_profile("parastep", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("parastep")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
