"""The fused C++/CUDA CTPO token loss (csrc/), as a torch op with autograd: loader and Python glue.

    import ctpo_ext
    ctpo_ext.load()  # JIT-builds csrc/ once (ninja), or imports the module built by `pip install -e .`
    loss, log_w = ctpo_ext.ctpo_token_loss(logp, old_logp, adv, mask, clip_low, clip_high, clip_c, power,
                                           geomean, delta_max, log_w_max)

`ctpo.policy_loss(..., backend="ext" | "auto")` calls this. The ops: torch.ops.ctpo.token_loss (forward: the
per-token loss, the clamped log rho, and one bit per token saying whether its gradient passes, since then
d loss_t / d logp_t = loss_t) and torch.ops.ctpo.token_loss_backward (grad * loss where the bit is set, else 0).
Fake kernels and the autograd formula are registered here, so it works under torch.compile(fullgraph=True).

Environment: CTPO_EXT_DIR (JIT build directory; default <repo>/.torch_extensions), CTPO_EXT_JIT=1 (ignore an
ahead-of-time build), CTPO_EXT_VERBOSE=1 (show the compiler), CTPO_EXT_CPU_CAPABILITY=AVX512|AVX2|DEFAULT
(override the instruction set chosen from torch.backends.cpu.get_cpu_capability()), CTPO_EXT_NO_CUDA=1 (CPU only
even with CUDA torch and nvcc).
"""

import importlib
import importlib.util
import os
import shutil
import threading
import warnings

import torch

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")
AOT_NAME = "_ctpo_ext"  # the module setup.py builds
BUILD_HINT = (
    "build it ahead of time with `pip install --no-build-isolation -e .` in the repository root, or let it JIT-build "
    "(needs a C++ compiler with OpenMP, e.g. g++, and ninja: `pip install ninja`); CTPO_EXT_VERBOSE=1 shows the compiler output"
)

_lock = threading.Lock()
_module = None  # the loaded extension module
_error = None  # the first load failure, re-raised on later calls without rebuilding
_registered = False
_with_cuda = False  # whether the loaded build has CUDA kernels (a plain bool: torch.compile traces the checks below)


# -----------------------------------------------------------------------------
# Build flags (shared with setup.py)


def cpu_capability():
    """The CPU instruction set to compile for: AVX512, AVX2 or DEFAULT (never one this CPU lacks)."""
    cap = os.environ.get("CTPO_EXT_CPU_CAPABILITY") or torch.backends.cpu.get_cpu_capability()
    return cap if cap in ("AVX512", "AVX2") else "DEFAULT"


def cxx_flags(capability=None):
    """-O3, OpenMP (at::parallel_for is serial without it) and the CPU_CAPABILITY defines at::vec needs."""
    cap = capability or cpu_capability()
    flags = ["-O3", "-fopenmp", "-ffp-contract=off", "-DNDEBUG"]
    if cap == "AVX512":
        flags += ["-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"]
    elif cap == "AVX2":
        flags += ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"]
    else:
        flags += ["-DCPU_CAPABILITY=DEFAULT"]
    return flags


LDFLAGS = ["-fopenmp"]
CPU_SOURCES = [os.path.join(CSRC, "ctpo.cpp")]
CUDA_KERNEL = os.path.join(CSRC, "ctpo_cuda.cu")  # torch-free: raw pointers + launchers (nvcc -c checks it anywhere)
CUDA_GLUE = os.path.join(CSRC, "ctpo_cuda_glue.cpp")  # torch glue, built only with CUDA torch


def build_dir():
    return os.environ.get("CTPO_EXT_DIR") or os.path.join(ROOT, ".torch_extensions")


def _jit_build(verbose):
    from torch.utils import cpp_extension

    cap = cpu_capability()
    with_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None and os.environ.get("CTPO_EXT_NO_CUDA", "0") != "1"
    sources = list(CPU_SOURCES)
    cflags = cxx_flags(cap)
    cuda_cflags = None
    if with_cuda:
        sources += [CUDA_KERNEL, CUDA_GLUE]
        cflags = cflags + ["-DCTPO_WITH_CUDA"]
        cuda_cflags = ["-O3", "-DCTPO_WITH_CUDA"]
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        raise RuntimeError(f"no C++ compiler ({os.environ.get('CXX', 'c++')}) on PATH")
    directory = os.path.join(build_dir(), f"{AOT_NAME}_{cap.lower()}{'_cuda' if with_cuda else ''}")
    os.makedirs(directory, exist_ok=True)
    return cpp_extension.load(
        name=AOT_NAME,
        sources=sources,
        extra_cflags=cflags,
        extra_cuda_cflags=cuda_cflags,
        extra_ldflags=LDFLAGS,
        build_directory=directory,
        verbose=verbose,
        with_cuda=with_cuda,
    )


def load(verbose=None):
    """Load the extension (import the ahead-of-time build, else JIT-build csrc/); idempotent and cheap after the
    first call. Returns the module. Raises RuntimeError saying how to build when it cannot."""
    global _module, _error, _with_cuda
    if _module is not None:
        return _module
    with _lock:
        if _module is not None:
            return _module
        if _error is not None:
            raise RuntimeError(_error)
        verbose = bool(int(os.environ.get("CTPO_EXT_VERBOSE", "0"))) if verbose is None else verbose
        mod, why = None, []
        if os.environ.get("CTPO_EXT_JIT", "0") != "1":
            spec = importlib.util.find_spec(AOT_NAME)
            if spec is None or not spec.origin:
                why.append("no ahead-of-time build")
            elif _older_than_sources(spec.origin):  # checked before importing: an import registers the ops for good
                warnings.warn(
                    f"ctpo_ext: the ahead-of-time build {spec.origin} is older than csrc/; using a JIT build instead "
                    "(rerun `pip install --no-build-isolation -e .` to refresh it)",
                    stacklevel=2,
                )
            else:
                try:
                    mod = importlib.import_module(AOT_NAME)
                except ImportError as e:
                    why.append(f"the ahead-of-time build does not import ({e})")
        if mod is None:
            try:
                mod = _jit_build(verbose)
            except Exception as e:  # compiler missing, compile error, ninja missing, ...
                msg = str(e).strip().splitlines()
                why.append(f"JIT build failed: {msg[-1] if msg else type(e).__name__}")
                _error = f"ctpo_ext: the C++ extension is unavailable ({'; '.join(why)}); {BUILD_HINT}"
                raise RuntimeError(_error) from e
        _register_python_parts()
        _with_cuda = bool(mod.with_cuda())
        _module = mod
        return mod


def supports(x):
    """Whether the loaded extension has a kernel for tensors on x's device (CPU always; CUDA if built with it)."""
    load()
    return x.device.type == "cpu" or (x.device.type == "cuda" and _with_cuda)


def _older_than_sources(path):
    try:
        built = os.path.getmtime(path)
        return any(os.path.getmtime(os.path.join(CSRC, f)) > built for f in os.listdir(CSRC))
    except OSError:  # no csrc/ next to this file (an installed copy): nothing to compare
        return False


def available():
    """True if the extension loads (builds it on first use); never raises."""
    try:
        load()
        return True
    except RuntimeError:
        return False


# -----------------------------------------------------------------------------
# Fake kernels and autograd (registered once, after the C++ library defined the ops)


def pass_bits_bytes(T):
    """Bytes per row of the op's pass_bits output: one bit per token, in whole 32-bit words."""
    return 4 * ((T + 31) // 32)


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _register_python_parts():
    global _registered
    if _registered:
        return

    @torch.library.register_fake("ctpo::token_loss")
    def _token_loss_fake(logp, old_logp, adv, mask, clip_low, clip_high, clip_c, power, geomean, delta_max, log_w_max):
        torch._check(logp.dim() == 2, lambda: "logp: expected shape (B, T)")
        B, T = logp.shape
        dt = _compute_dtype(logp.dtype)
        bits = logp.new_empty((B, pass_bits_bytes(T)), dtype=torch.uint8)
        return logp.new_empty((B, T), dtype=dt), logp.new_empty((B, T), dtype=dt), bits

    @torch.library.register_fake("ctpo::token_loss_backward")
    def _token_loss_backward_fake(grad_loss, loss, pass_bits, grad_dtype):
        return loss.new_empty(loss.shape, dtype=grad_dtype)

    def setup_context(ctx, inputs, output):
        loss, log_w, pass_bits = output
        ctx.save_for_backward(loss, pass_bits)  # d loss_t / d logp_t is loss_t where the bit is set, else 0
        ctx.logp_dtype = inputs[0].dtype
        ctx.mark_non_differentiable(log_w, pass_bits)
        ctx.set_materialize_grads(False)  # else autograd fills a (B, T) zero gradient for log_w

    def backward(ctx, grad_loss, grad_log_w, grad_bits):
        # stop-gradient form: only logp gets a gradient; old_logp and adv get none (as in the reference)
        loss, pass_bits = ctx.saved_tensors
        g_logp = None
        if grad_loss is not None and ctx.needs_input_grad[0]:
            g_logp = torch.ops.ctpo.token_loss_backward(grad_loss, loss, pass_bits, ctx.logp_dtype)
        return (g_logp,) + (None,) * 10

    torch.library.register_autograd("ctpo::token_loss", backward, setup_context=setup_context)
    _registered = True


# -----------------------------------------------------------------------------
# The entry point ctpo.py calls

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def ctpo_token_loss(
    logp, old_logp, adv, mask, clip_low=0.025, clip_high=0.05, clip_c=0.05, power=0.5, geomean=False, delta_max=20.0, log_w_max=10.0
):
    """Per-token CTPO loss with the cumulative ratio and the position-adaptive log-space clip, fused.

    logp, old_logp: (B, T) float16/bfloat16/float32/float64 (any strides); adv: (B, T) (an expanded (B,)
    view is read once per row, never materialised) or (B,); mask: (B, T) bool.
    Returns (loss, log_w), both (B, T) in float32 (float64 for float64 logp): loss is 0 where mask is False
    and differentiable w.r.t. logp only (stop-gradient form); log_w is the clamped log rho (detached). Equal to
    ctpo.token_losses(logp, old_logp, adv, mask, cfg)[:2] for the cumulative ratio with adaptive clip.
    """
    if _module is None:
        load()
    for name, x in (("logp", logp), ("old_logp", old_logp), ("adv", adv), ("mask", mask)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if logp.dim() != 2:
        raise ValueError(f"logp: expected shape (B, T), got {tuple(logp.shape)}")
    for name, x in (("logp", logp), ("old_logp", old_logp), ("adv", adv)):
        if x.dtype not in _FLOATS:
            raise TypeError(f"{name}: expected float16/bfloat16/float32/float64, got {x.dtype}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask: expected a bool tensor, got {mask.dtype}")
    if old_logp.shape != logp.shape:
        raise ValueError(f"old_logp: expected shape {tuple(logp.shape)} like logp, got {tuple(old_logp.shape)}")
    if mask.shape != logp.shape:
        raise ValueError(f"mask: expected shape {tuple(logp.shape)} like logp, got {tuple(mask.shape)}")
    if adv.shape == logp.shape[:1]:
        adv = adv[:, None].expand_as(logp)
    elif adv.shape != logp.shape:
        raise ValueError(f"adv: expected shape {tuple(logp.shape)} or ({logp.shape[0]},), got {tuple(adv.shape)}")
    for name, x in (("old_logp", old_logp), ("adv", adv), ("mask", mask)):
        if x.device != logp.device:
            raise ValueError(f"{name}: expected device {logp.device} like logp, got {x.device}")
    if logp.device.type not in ("cpu", "cuda"):
        raise ValueError(f"logp: the fused kernel runs on CPU and CUDA tensors, got device {logp.device}")
    if logp.device.type == "cuda" and not _with_cuda:
        raise RuntimeError(f"logp: on {logp.device}, but this build of the extension has no CUDA kernel (CPU-only torch or no nvcc)")
    if not (clip_low >= 0 and clip_high >= 0 and clip_c > 0):
        raise ValueError(
            f"clip_low, clip_high, clip_c: need clip_low >= 0, clip_high >= 0, clip_c > 0; got {(clip_low, clip_high, clip_c)}"
        )
    loss, log_w, _ = torch.ops.ctpo.token_loss(
        logp, old_logp, adv, mask, float(clip_low), float(clip_high), float(clip_c), float(power), bool(geomean), float(delta_max),
        float(log_w_max),
    )  # fmt: skip
    return loss, log_w
