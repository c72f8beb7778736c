"""The fused C++/CUDA CTPO policy loss (csrc/), as a torch op with autograd: loader and Python glue.

    import ctpo_ext
    ctpo_ext.load()  # JIT-builds csrc/ once (ninja, ~30 s), or imports the module built by `pip install -e .`
    out = ctpo_ext.policy_loss_op(logp, old_logp, adv, mask, ratio="cumulative", lower=-0.025, upper=0.05,
                                  dual=0.05, power=0.5)   # out.loss, out.row_loss, out.log_w, out.clipped, ...

`ctpo.policy_loss(..., backend="ext" | "auto")` calls the op for every method. The ops (csrc/ctpo.cpp says what
each output holds): torch.ops.ctpo.policy_loss (forward: per-token loss, per-row loss sums, the clamped log w,
the clipped flags, one bit per token saying whether its gradient passes, per-row metric partials, log w
quantiles) and torch.ops.ctpo.policy_loss_backward (grad * loss where the bit is set, else 0). Fake kernels and
the autograd formula are registered here, so it works under torch.compile(fullgraph=True).

Environment: CTPO_EXT_DIR (JIT build directory; default <repo>/.torch_extensions), CTPO_EXT_JIT=1 (ignore an
ahead-of-time build), CTPO_EXT_VERBOSE=1 (show the compiler), CTPO_EXT_CPU_CAPABILITY=AVX512|AVX2|DEFAULT
(override the instruction set chosen from torch.backends.cpu.get_cpu_capability()), CTPO_EXT_NO_CUDA=1 (CPU only
even with CUDA torch and nvcc). With a CUDA torch but no visible GPU and TORCH_CUDA_ARCH_LIST unset, the build is
CPU-only (torch cannot pick an architecture then); set TORCH_CUDA_ARCH_LIST (e.g. "8.0;9.0") to build the CUDA
kernels anyway.
"""

import importlib
import importlib.util
import math
import numbers
import os
import shutil
import sys
import threading
import warnings
from collections import namedtuple

import torch

ROOT = os.path.dirname(os.path.abspath(__file__))
# csrc/ in a checkout; ctpo_csrc/ beside this file in an installed copy (setup.py installs the sources there)
CHECKOUT = os.path.isdir(os.path.join(ROOT, "csrc"))
CSRC = os.path.join(ROOT, "csrc" if CHECKOUT else "ctpo_csrc")
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
CUDA_CFLAGS = ["-O3", "-DCTPO_WITH_CUDA", "-std=c++17"]


def build_dir():
    """CTPO_EXT_DIR, else .torch_extensions/ in a checkout, else ~/.cache/ctpo/torch_extensions (site-packages may be read-only)."""
    if os.environ.get("CTPO_EXT_DIR"):
        return os.environ["CTPO_EXT_DIR"]
    if CHECKOUT:
        return os.path.join(ROOT, ".torch_extensions")
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ctpo", "torch_extensions")


def want_cuda(cuda_home):
    """(build the CUDA kernels?, why not): CUDA torch, nvcc (CUDA_HOME), not CTPO_EXT_NO_CUDA=1, and an architecture
    to compile for: TORCH_CUDA_ARCH_LIST, else the visible GPUs' (torch's own rule; without either it would stop
    with an IndexError inside torch's _get_cuda_arch_flags)."""
    if torch.version.cuda is None:
        return False, "CPU-only torch"
    if cuda_home is None:
        return False, "no CUDA toolkit (nvcc / CUDA_HOME) found"
    if os.environ.get("CTPO_EXT_NO_CUDA", "0") == "1":
        return False, "CTPO_EXT_NO_CUDA=1"
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        return False, "no visible GPU and TORCH_CUDA_ARCH_LIST unset (set it, e.g. TORCH_CUDA_ARCH_LIST=9.0, to build the CUDA kernels)"
    return True, ""


def _jit_build(verbose):
    from torch.utils import cpp_extension

    cap = cpu_capability()
    with_cuda, why_not = want_cuda(cpp_extension.CUDA_HOME)
    if not with_cuda and torch.version.cuda is not None:
        print(f"ctpo_ext: building the CPU kernel only: {why_not}", file=sys.stderr, flush=True)
    sources = list(CPU_SOURCES)
    cflags = cxx_flags(cap)
    cuda_cflags = None
    if with_cuda:
        sources += [CUDA_KERNEL, CUDA_GLUE]
        cflags = cflags + ["-DCTPO_WITH_CUDA"]
        cuda_cflags = list(CUDA_CFLAGS)
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        raise RuntimeError(f"no C++ compiler ({os.environ.get('CXX', 'c++')}) on PATH")
    directory = os.path.join(build_dir(), f"{AOT_NAME}_{cap.lower()}{'_cuda' if with_cuda else ''}")
    os.makedirs(directory, exist_ok=True)
    if not verbose and not os.path.exists(os.path.join(directory, f"{AOT_NAME}.so")):
        what = "CPU (" + cap + ")" + (" + CUDA" if with_cuda else "")
        print(f"ctpo_ext: building the {what} extension in {directory} (once, ~30 s)...", file=sys.stderr, flush=True)
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
    if not CHECKOUT:  # an installed copy: its build and its sources were installed together
        return False
    try:
        built = os.path.getmtime(path)
        return any(os.path.getmtime(os.path.join(CSRC, f)) > built for f in os.listdir(CSRC))
    except OSError:
        return False


def available():
    """True if the extension loads (builds it on first use); never raises."""
    try:
        load()
        return True
    except RuntimeError:
        return False


# -----------------------------------------------------------------------------
# The op's conventions (csrc/ctpo_layout.h), fake kernels and autograd (registered once, after the C++ library
# defined the ops)

RATIO_CODES = {"token": 0, "sequence": 1, "gspo": 2, "cumulative": 3, "cumulative-geomean": 4}
STATS = (  # the rows of the op's per-row `stats` output (12, B) and the entries of its batch `totals` (12,), float64
    "n_tokens",
    "n_clip_high",
    "n_clip_low",
    "n_clip_dual",
    "n_clipped",  # high | low | dual (low and dual can coincide)
    "sum_w",  # sum of exp(log w) over mask tokens
    "min_log_w",  # +inf for a row without mask tokens; totals: the min over rows
    "max_log_w",  # -inf for a row without mask tokens; totals: the max over rows
    "bad_logp",  # 1 if NaN / inf at a mask=1 position of the row
    "bad_old_logp",
    "bad_adv",
    "bad_rollout_is_weights",  # 1 if NaN / inf / negative at a mask=1 position
)
QUANTILES = (10, 50, 90)  # the op's log_w_q output: nearest-rank quantiles, in percent

FusedLoss = namedtuple("FusedLoss", "loss row_loss log_w clipped pass_bits stats totals log_w_q")


def pass_bits_bytes(T):
    """Bytes per row of the op's pass_bits output: one bit per token, in whole 32-bit words."""
    return 4 * ((T + 31) // 32)


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _register_python_parts():
    global _registered
    if _registered:
        return

    @torch.library.register_fake("ctpo::policy_loss")
    def _policy_loss_fake(logp, old_logp, adv, mask, rw, ratio, lower, upper, dual, power, delta_max, log_w_max, sample_stride):
        torch._check(logp.dim() == 2, lambda: "logp: expected shape (B, T)")
        B, T = logp.shape
        dt = _compute_dtype(logp.dtype)
        return (
            logp.new_empty((B, T), dtype=dt),
            logp.new_empty((B,), dtype=torch.float64),
            logp.new_empty((B, T), dtype=dt),
            logp.new_empty((B, T), dtype=torch.bool),
            logp.new_empty((B, pass_bits_bytes(T)), dtype=torch.uint8),
            logp.new_empty((len(STATS), B), dtype=torch.float64),
            logp.new_empty((len(STATS),), dtype=torch.float64),
            logp.new_empty((len(QUANTILES),), dtype=dt),
        )

    @torch.library.register_fake("ctpo::policy_loss_backward")
    def _policy_loss_backward_fake(grad_loss, grad_row_loss, loss, pass_bits, grad_dtype):
        return loss.new_empty(loss.shape, dtype=grad_dtype)

    def setup_context(ctx, inputs, output):
        loss, row_loss, log_w, clipped, pass_bits, stats, totals, q = output
        ctx.save_for_backward(loss, pass_bits)  # d loss_t / d logp_t is loss_t where the bit is set, else 0
        ctx.logp_dtype = inputs[0].dtype
        ctx.mark_non_differentiable(log_w, clipped, pass_bits, stats, totals, q)
        ctx.set_materialize_grads(False)  # else autograd fills (B, T) zero gradients for the unused outputs

    def backward(ctx, grad_loss, grad_row_loss, *unused):
        # stop-gradient form: only logp gets a gradient; old_logp, adv and the weights get none (as the reference)
        loss, pass_bits = ctx.saved_tensors
        g_logp = None
        if (grad_loss is not None or grad_row_loss is not None) and ctx.needs_input_grad[0]:
            g_logp = torch.ops.ctpo.policy_loss_backward(grad_loss, grad_row_loss, loss, pass_bits, ctx.logp_dtype)
        return (g_logp,) + (None,) * 12

    torch.library.register_autograd("ctpo::policy_loss", backward, setup_context=setup_context)
    _registered = True


# -----------------------------------------------------------------------------
# Entry points

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check(logp, old_logp, adv, mask, rollout_is_weights):
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
    if rollout_is_weights is not None:
        if not isinstance(rollout_is_weights, torch.Tensor) or rollout_is_weights.dtype not in _FLOATS:
            raise TypeError(f"rollout_is_weights: expected a float tensor, got {type(rollout_is_weights).__name__}")
        if rollout_is_weights.shape != logp.shape:
            raise ValueError(f"rollout_is_weights: expected shape {tuple(logp.shape)} like logp, got {tuple(rollout_is_weights.shape)}")
    for name, x in (("old_logp", old_logp), ("adv", adv), ("mask", mask), ("rollout_is_weights", rollout_is_weights)):
        if x is not None and x.device != logp.device:
            raise ValueError(f"{name}: expected device {logp.device} like logp, got {x.device}")
    if logp.device.type not in ("cpu", "cuda"):
        raise ValueError(f"logp: the fused kernel runs on CPU and CUDA tensors, got device {logp.device}")
    if logp.device.type == "cuda" and not _with_cuda:
        raise RuntimeError(f"logp: on {logp.device}, but this build of the extension has no CUDA kernel (CPU-only torch or no nvcc)")
    return adv


def _as_float(name, v):
    """A real number (Python, numpy, or a one-element tensor) as a float; TypeError naming the argument otherwise."""
    if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.dtype.is_complex and v.dtype != torch.bool:
        return float(v)
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        return float(v)
    raise TypeError(f"{name}: expected a real number, got {type(v).__name__}")


def _as_int(name, v):
    """An integral number (an int, a numpy integer, or a float / one-element tensor with an integral value) as an int."""
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return int(v)
    f = _as_float(name, v)
    if not f.is_integer():
        raise TypeError(f"{name}: expected an integer, got {v!r}")
    return int(f)


def _checked_knobs(logp, lower, upper, dual, power, delta_max, log_w_max, sample_stride):
    """The op's scalar arguments, converted (floats, then the int stride), with the C++ op's checks."""
    names = ("lower", "upper", "dual", "power", "delta_max", "log_w_max")
    lower, upper, dual, power, delta_max, log_w_max = (
        _as_float(n, v) for n, v in zip(names, (lower, upper, dual, power, delta_max, log_w_max))
    )
    if not math.isfinite(power):
        raise ValueError(f"power: expected a finite number, got {power}")
    if not delta_max > 0:
        raise ValueError(f"delta_max: expected > 0, got {delta_max}")
    if not log_w_max >= 0:
        raise ValueError(f"log_w_max: expected >= 0, got {log_w_max}")
    sample_stride = _as_int("sample_stride", sample_stride)
    if sample_stride < 1:
        raise ValueError(f"sample_stride: expected an integer >= 1, got {sample_stride}")
    if logp.shape[1] >= 2**31 - 64:
        raise ValueError(f"logp: T = {logp.shape[1]} is too long (at most 2^31 - 65 tokens per row)")
    return [lower, upper, dual, power, delta_max, log_w_max, sample_stride]


def policy_loss_op(
    logp,
    old_logp,
    adv,
    mask,
    rollout_is_weights=None,
    ratio="cumulative",
    lower=-0.025,
    upper=0.05,
    dual=0.05,
    power=0.5,
    delta_max=20.0,
    log_w_max=10.0,
    sample_stride=1,
):
    """The whole per-token policy loss of any method, fused: torch.ops.ctpo.policy_loss with input checks.

    logp, old_logp: (B, T) float16/bfloat16/float32/float64 (any strides); adv: (B,) or (B, T) (an expanded (B,)
    view is read once per row); mask: (B, T) bool; rollout_is_weights: optional (B, T) float, multiplies each
    token's loss (never differentiated). ratio: token | sequence | gspo | cumulative | cumulative-geomean.
    Window on log w at response position t: [lower * t^power, upper * t^power], dual cap dual * t^power
    (PPO: power = 0, lower = log(1 - eps_low), upper = log1p(eps_high), dual = log(dual_c)).
    sample_stride: the quantiles' subsample (flat positions 0, s, 2s, ...; 1 = every token). On CUDA a sample of
    more than 4096 positions is sorted with ATen ops, which synchronise: ctpo.quantile_stride(B, T) keeps it at
    about 4096 (what ctpo.policy_loss passes).
    Returns FusedLoss(loss (B, T), row_loss (B,) float64 (sum_t loss, accumulated in float64), log_w (B, T),
    clipped (B, T) bool, pass_bits, stats (12, B) float64 with rows STATS, totals (12,) float64 (the batch's:
    sums, min of the mins, max of the maxes), log_w_q (3,)); loss, log_w, log_w_q
    in float32 (float64 for float64 logp). loss and row_loss are differentiable w.r.t. logp only (stop-gradient
    form). Equal to ctpo.token_losses for the same method.
    """
    if _module is None:
        load()
    adv = _check(logp, old_logp, adv, mask, rollout_is_weights)
    if ratio not in RATIO_CODES:
        raise ValueError(f"ratio: expected one of {list(RATIO_CODES)}, got {ratio!r}")
    if torch.compiler.is_compiling():  # traced: the knobs may be symbolic floats; float() / int() specialise them
        knobs = [float(v) for v in (lower, upper, dual, power, delta_max, log_w_max)] + [int(sample_stride)]
    else:  # every check the C++ op makes, made here first, so that a C++ exception is never the first line of
        # defence (on one GPU image an extension built with its compiler wrapper crashed on any; docs/kernel.md)
        knobs = _checked_knobs(logp, lower, upper, dual, power, delta_max, log_w_max, sample_stride)
    return FusedLoss(
        *torch.ops.ctpo.policy_loss(
            logp,
            old_logp,
            adv,
            mask,
            rollout_is_weights,
            RATIO_CODES[ratio],
            *knobs,
        )  # fmt: skip
    )


def ctpo_token_loss(
    logp, old_logp, adv, mask, clip_low=0.025, clip_high=0.05, clip_c=0.05, power=0.5, geomean=False, delta_max=20.0, log_w_max=10.0
):
    """Per-token CTPO loss (cumulative ratio, position-adaptive window), fused: policy_loss_op's (loss, log_w).

    Shapes and dtypes as policy_loss_op. Equal to ctpo.token_losses(logp, old_logp, adv, mask, cfg)[:2] for the
    cumulative ratio with the adaptive clip.
    """
    if not (clip_low >= 0 and clip_high >= 0 and clip_c > 0):
        raise ValueError(
            f"clip_low, clip_high, clip_c: need clip_low >= 0, clip_high >= 0, clip_c > 0; got {(clip_low, clip_high, clip_c)}"
        )
    ratio = "cumulative-geomean" if geomean else "cumulative"
    stride = max(1, -(-logp.numel() // 4096))  # the quantiles are discarded here: keep their sample small
    out = policy_loss_op(logp, old_logp, adv, mask, None, ratio, -clip_low, clip_high, clip_c, power, delta_max, log_w_max, stride)
    return out.loss, out.log_w
