"""Ahead-of-time build of the fused CTPO kernel (csrc/) as the module `_ctpo_ext`, which ctpo_ext.load() imports.

    pip install --no-build-isolation -e .

Builds a CppExtension (CPU: -O3, OpenMP, the CPU_CAPABILITY defines for this CPU); when torch is a CUDA build,
nvcc is found (CUDA_HOME) and there is an architecture to compile for (TORCH_CUDA_ARCH_LIST, or a visible GPU), a
CUDAExtension that adds the CUDA kernels; otherwise it says in one line why it builds the CPU kernel only.
CTPO_EXT_NO_CUDA=1 forces CPU only.
--no-build-isolation matters: the extension must be compiled against the torch you run with.
"""

import os
import sys

from setuptools import setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

import ctpo_ext  # noqa: E402  (the build flags live there, shared with the JIT build)

with_cuda, why_not = ctpo_ext.want_cuda(CUDA_HOME)
if not with_cuda and torch.version.cuda is not None:
    print(f"setup.py: building the CPU kernel only: {why_not}", file=sys.stderr)
cpu_sources = ["csrc/ctpo.cpp"]
if with_cuda:
    ext = CUDAExtension(
        ctpo_ext.AOT_NAME,
        cpu_sources + ["csrc/ctpo_cuda.cu", "csrc/ctpo_cuda_glue.cpp"],
        extra_compile_args={"cxx": ctpo_ext.cxx_flags() + ["-DCTPO_WITH_CUDA"], "nvcc": ctpo_ext.CUDA_CFLAGS},
        extra_link_args=ctpo_ext.LDFLAGS,
    )
else:
    ext = CppExtension(ctpo_ext.AOT_NAME, cpu_sources, extra_compile_args={"cxx": ctpo_ext.cxx_flags()}, extra_link_args=ctpo_ext.LDFLAGS)

setup(
    name="ctpo",
    version="0.1.0",
    description="CTPO (Cumulative Token Policy Optimization): reference implementation with a fused C++/CUDA loss kernel",
    py_modules=["ctpo", "ctpo_ext", "ctpo_trl", "ctpo_verl"],  # ctpo_verl: the verl.plugins entry point below imports it
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension},
    # verl loads this group on `import verl` in every process (Ray workers too): it registers the ctpo losses
    entry_points={"verl.plugins": ["ctpo = ctpo_verl"]},
    python_requires=">=3.10",
)
