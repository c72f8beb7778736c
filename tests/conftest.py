import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ctpo_ext  # noqa: E402  (after the path: the repository's own module)


# the fused extension's fixtures, shared by tests/test_ext.py and tests/test_ext_policy_loss.py
@pytest.fixture(scope="module")
def ext():
    mod = ctpo_ext.load()  # builds here: a failure is a test failure (CI has a compiler)
    yield mod
    mod.set_cpu_kernel("auto")


@pytest.fixture(params=["auto", "vec", "scalar"])
def cpu_path(request, ext):
    """Each CPU row kernel of the build in turn (auto: the AVX-512 one where compiled in)."""
    if request.param != "auto" and ext.compiled_cpu_path().startswith(request.param):
        pytest.skip(f"auto is the {request.param} kernel in this build")
    ext.set_cpu_kernel(request.param)
    yield request.param
    ext.set_cpu_kernel("auto")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors on a shared 2-core machine: one thread is several times faster; restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
