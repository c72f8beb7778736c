"""Installs the ctpo modules, and the fused CTPO kernel (csrc/) as the module `_ctpo_ext` when it can be built here.

    pip install .                              # use ctpo from your own code, from any directory
    pip install -e .                           # the same, editable, for development in this checkout
    pip install --no-build-isolation -e .      # also compiles the kernel now, against the torch you run with

Install torch first (any torch >= 2.4; CI uses torch==2.13.0). pip builds in an isolated environment by default,
where your torch is not importable: then only the Python modules and the kernel's sources are installed, and the
first `backend="ext"` call JIT-builds the kernel (a C++ compiler with OpenMP and ninja; about 30 s once, into
~/.cache/ctpo/torch_extensions for an installed copy). With --no-build-isolation the kernel is compiled at install
time: a CppExtension (CPU: -O3, OpenMP, the CPU_CAPABILITY defines for this CPU) and, when torch is a CUDA build,
nvcc is found (CUDA_HOME) and there is an architecture to compile for (TORCH_CUDA_ARCH_LIST, or a visible GPU), a
CUDAExtension that adds the CUDA kernels; otherwise it says in one line why it builds the CPU kernel only.
CTPO_EXT_NO_CUDA=1 forces CPU only.
"""

import os
import shutil
import sys
import sysconfig

from setuptools import setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def extension():
    """(ext_modules, cmdclass) for the ahead-of-time build, or ([], {}) with one line saying why there is none."""
    try:
        import torch  # noqa: F401
    except ImportError:
        why = "torch is not importable in this build environment (pip's build isolation)"
        print(f"setup.py: {why}: installing the sources; the first backend='ext' call JIT-builds the kernel", file=sys.stderr)
        return [], {}
    if shutil.which(os.environ.get("CXX") or sysconfig.get_config_var("CXX").split()[0] or "c++") is None:
        print("setup.py: no C++ compiler found: installing the sources; backend='python' works, backend='ext' needs one", file=sys.stderr)
        return [], {}
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    import ctpo_ext  # the build flags live there, shared with the JIT build

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
        ext = CppExtension(
            ctpo_ext.AOT_NAME, cpu_sources, extra_compile_args={"cxx": ctpo_ext.cxx_flags()}, extra_link_args=ctpo_ext.LDFLAGS
        )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = extension()
setup(
    name="ctpo",
    version="0.1.0",
    description="CTPO (Cumulative Token Policy Optimization): reference implementation with a fused C++/CUDA loss kernel",
    py_modules=["ctpo", "ctpo_checks", "ctpo_ext", "ctpo_trl", "ctpo_verl"],  # ctpo_verl: the verl.plugins entry point below imports it
    # the kernel's sources, for the JIT build of an installed copy (ctpo_ext looks for csrc/ beside it, then ctpo_csrc/)
    packages=["ctpo_csrc"],
    package_dir={"ctpo_csrc": "csrc"},
    package_data={"ctpo_csrc": ["*.cpp", "*.h", "*.cu"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    # torch: install the build you want first (CPU or CUDA); numpy: torch warns at import without it
    install_requires=["torch>=2.4", "numpy>=1.24"],
    # verl loads this group on `import verl` in every process (Ray workers too): it registers the ctpo losses
    entry_points={"verl.plugins": ["ctpo = ctpo_verl"]},
    python_requires=">=3.10",
)
