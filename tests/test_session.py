"""How the test session runs its own torch work (tests/conftest.py)."""

import torch


def test_the_session_runs_torch_on_one_thread():
    """The background runs and the tests' subprocesses keep the cores busy; a wider thread
    pool in the pytest process then waits on descheduled threads (conftest.pytest_configure)."""
    assert torch.get_num_threads() == 1
