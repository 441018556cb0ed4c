"""Shared pytest setup: markers and keeping the 2-core CI machine responsive."""

import os

import pytest

# Tests run on CPU with one intra-op thread: on the 2-core CI machine more threads make the
# small convolutions of tiny models many times slower, and results depend on the thread count.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~20 s on 2 CPU cores")
    config.addinivalue_line("markers", "e2e: runs the real snakemake on the demo")
    config.addinivalue_line("markers", "slurm: starts a single-node Slurm (needs root and apt)")
    config.addinivalue_line("markers", "reliability: end-to-end failure, resume and cache tests")


@pytest.fixture(autouse=True)
def _torch_threads():
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    yield


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """One complete run of the demo DAG (e2e budgets) shared by the end-to-end tests.

    Tests must not modify it; copy it first (``tests.e2e.copy_tree``).
    """
    from tests import e2e

    workdir = e2e.make_workdir(tmp_path_factory.mktemp("demo_run") / "work")
    e2e.run(workdir, "--resources", "gpu=2")
    return workdir
