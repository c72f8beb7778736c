"""The fused C++/CUDA CTPO policy loss (csrc/), as a torch op with autograd: loader and Python glue.

    import ctpo_ext
    ctpo_ext.load()  # JIT-builds csrc/ once (ninja, ~30 s), or imports the module built by `pip install -e .`
    loss, metrics = ctpo_ext.policy_loss(logp, old_logp, adv, mask, None, "cumulative", -0.025, 0.05, 0.05, 0.5, 20.0, 10.0,
                                         "token-mean")  # CTPO's defaults: metrics as ctpo.policy_loss returns them

`ctpo.policy_loss(..., backend="ext" | "auto")` calls it for every method. The ops (csrc/ctpo.cpp's schema says
what each output holds): torch.ops.ctpo.policy_loss (forward: the aggregated loss, the metrics, log w, the clipped
flags, and what the backward needs) and torch.ops.ctpo.policy_loss_backward (one pass). As pytorch/extension-cpp's
ops.py: load / build, register_fake, register_autograd, and the one function ctpo.py calls; so it works under
torch.compile(fullgraph=True).

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
import os
import shutil
import sys
import threading
import warnings

import torch

ROOT = os.path.dirname(os.path.abspath(__file__))
# csrc/ in a checkout; ctpo_csrc/ beside this file in an installed copy (setup.py installs the sources there)
CHECKOUT = os.path.isfile(os.path.join(ROOT, "csrc", "ctpo.cpp"))
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
    return supports_device(x.device.type)


def supports_device(device_type):
    """Whether the loaded extension has a kernel for tensors of this device type ("cpu", "cuda", ...)."""
    load()
    return device_type == "cpu" or (device_type == "cuda" and _with_cuda)


def problem(device_type):
    """Why the fused op cannot run on `device_type` tensors, or None; never raises. Loads (builds) on first use."""
    try:
        load()
        if not supports_device(device_type):
            return f"the extension was built without a kernel for {device_type} tensors"
    except Exception as e:  # a missing compiler, a failed build
        return f"the extension could not be loaded ({e}); build it with `pip install --no-build-isolation -e .`"
    return None


# Run eagerly, also while torch.compile traces ctpo.policy_loss (a build cannot be traced): the mark that
# torch.compiler.assume_constant_result sets, set here without it, because it imports torch._dynamo (1.5 s per process)
problem._dynamo_marked_constant = True


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
# The op's conventions (csrc/ctpo_layout.h), its fake kernel and autograd (registered once, after the C++ library
# defined the ops), and the one function ctpo.py calls

RATIO_CODES = {"token": 0, "sequence": 1, "gspo": 2, "cumulative": 3, "cumulative-geomean": 4}
AGG_CODES = {"token-mean": 0, "token-sum": 1, "seq-mean-token-mean": 2, "seq-mean-token-sum": 3, "seq-mean-token-sum-norm": 4}
# the op's `config` (ctpo_layout.h Config): its scalars in one float list, because torch.library's autograd wrapper
# re-reads the schema once per argument on every call (O(n^2) in the op's arity: ~70 us for 16 separate arguments)
CONFIG = ("ratio", "lower", "upper", "dual", "power", "delta_max", "log_w_max", "agg", "num_tokens", "num_seqs", "loss_scale_factor")
COUNTS = ("n_tokens", "n_clip_high", "n_clip_low", "n_clip_dual", "check")  # the op's `counts` (5,) int64
METRICS = (  # the op's `metrics` (12,) float32: ctpo.loss_metrics' scalars, then the largest log-probs
    "clip_frac_high", "clip_frac_low", "clip_frac_dual", "clip_frac", "ratio_mean", "ratio_min", "ratio_max", "ratio_q10", "ratio_q50",
    "ratio_q90", "max_logp", "max_old_logp",
)  # fmt: skip
N_COUNT_KEYS, N_METRIC_KEYS, CHECK = 4, 10, COUNTS.index("check")  # how many of each output policy_loss returns; the check word
METRIC_KEYS = COUNTS[:N_COUNT_KEYS] + METRICS[:N_METRIC_KEYS]  # what ctpo.policy_loss returns, in the order of the op's outputs
CHECKS = (  # the `check` bits of bad values, in the order ctpo.check_values raises them
    (8, "rollout_is_weights: expected finite non-negative values at every mask=1 position"),
    (1, "logp: NaN or inf at a mask=1 position"),
    (2, "old_logp: NaN or inf at a mask=1 position"),
    (4, "advantages: NaN or inf at a mask=1 position"),
)
LOGP_ABOVE = ((16, "logp", 10), (32, "old_logp", 11))  # check bit, input, its largest value's metrics column
# A log-prob is <= 0, but log_softmax in float32 can return a rounding residue above 0 (~1e-7; ~1e-6 for a logsumexp
# of 100), kept by bfloat16 / float16 storage. The margin is below the smallest clip window (clip_low = 0.025 at t = 1):
# a log-prob off by more would change which tokens clip. Probabilities or logits exceed it in any batch.
LOGP_MARGIN = 0.01  # ctpo_layout.h kLogpMargin
QUANTILE_SAMPLE = 4096  # the ratio quantiles look at this many positions at most (all of them below)
WEYL = 0x9E3779B9  # 2^32 / golden ratio: the sample's columns, a Weyl sequence in 32-bit fixed point


def quantile_sample(B, T, device=None):
    """The ratio quantiles' sample of a (B, T) batch, on both backends (sampled_quantiles; ctpo_layout.h is the same
    rule): flat positions (K,) long and which exist (K,) bool, K = QUANTILE_SAMPLE. With B T <= K every position; else
    position k at row floor(k B / K), column floor(frac(k phi) T) (a Weyl sequence: every row's samples spread over all
    its positions, whatever T divides). Tensor arithmetic only, so it traces with symbolic B, T."""
    k = torch.arange(QUANTILE_SAMPLE, device=device)
    if B * T <= QUANTILE_SAMPLE:
        return k.clamp(max=max(B * T - 1, 0)), k < B * T
    col = ((k * WEYL) & 0xFFFFFFFF) * T >> 32
    return (k * B) // QUANTILE_SAMPLE * T + col, torch.ones_like(k, dtype=torch.bool)


QUANTILES = (10, 50, 90)  # ratio_q10 / q50 / q90, in percent


def sampled_quantiles(log_w, mask):
    """The Python backend's ratio_q10 / q50 / q90 (ctpo.loss_metrics), on the kernel's sample: nearest-rank 10/50/90 %
    quantiles (k = max(1, ceil(q n / 100))) of log w over the mask tokens of `quantile_sample` (if it holds none: the
    first 4096 mask tokens in flat order; 0 if there are none). log_w, mask: (B, T). Returns (3,). Exact
    up to 4096 positions; beyond, the value's rank among all mask tokens is off by about 1/sqrt(4096) = 1.6 % of the
    count (tests/test_ext_policy_loss.py checks +-3 % on 2^20 tokens)."""
    B, T = mask.shape
    if B * T == 0:
        return log_w.new_zeros(len(QUANTILES))
    lw, m = log_w.detach().reshape(-1), mask.reshape(-1)
    pos, valid = quantile_sample(B, T, log_w.device)
    valid, rank = valid & m[pos], m.cumsum(0)  # rank: (B T,) mask tokens up to each position
    r = torch.arange(1, QUANTILE_SAMPLE + 1, device=log_w.device)
    missed = ~valid.any()  # the sample caught no mask token: take the first ones (rank r is at searchsorted(rank, r))
    pos = torch.where(missed, torch.searchsorted(rank, r).clamp(max=B * T - 1), pos)
    valid = torch.where(missed, r <= rank[-1], valid)
    vals, n = torch.where(valid, lw[pos], math.nan).sort().values, valid.sum()  # NaN (the missing) sorts last
    kth = ((torch.tensor(QUANTILES, device=log_w.device) * n + 99) // 100).clamp(min=1) - 1
    return torch.where(n > 0, vals[kth], 0.0)


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _register_python_parts():
    global _registered
    if _registered:
        return

    @torch.library.register_fake("ctpo::policy_loss")
    def _policy_loss_fake(logp, old_logp, adv, mask, rw, config):
        torch._check(logp.dim() == 2, lambda: "logp: expected shape (B, T)")
        B, T = logp.shape
        dt = _compute_dtype(logp.dtype)
        return (
            logp.new_empty((), dtype=dt),
            logp.new_empty((len(COUNTS),), dtype=torch.int64),
            logp.new_empty((len(METRICS),), dtype=torch.float32),
            logp.new_empty((B, T), dtype=dt),
            logp.new_empty((B, T), dtype=torch.bool),
            logp.new_empty((B, T), dtype=dt),
            logp.new_empty((B,), dtype=dt),
        )

    @torch.library.register_fake("ctpo::policy_loss_backward")
    def _policy_loss_backward_fake(grad_loss, grad, row_scale, grad_dtype):
        return grad.new_empty(grad.shape, dtype=grad_dtype)

    def setup_context(ctx, inputs, output):
        loss, counts, metrics, log_w, clipped, grad, row_scale = output
        ctx.save_for_backward(grad, row_scale)  # d loss / d logp[i, t] = row_scale[i] * grad[i, t]
        ctx.logp_dtype = inputs[0].dtype
        ctx.mark_non_differentiable(counts, metrics, log_w, clipped, grad, row_scale)
        ctx.set_materialize_grads(False)

    def backward(ctx, grad_loss, *unused):
        # stop-gradient form: only logp gets a gradient; old_logp, adv and the weights get none (as the reference)
        g_logp = None
        if grad_loss is not None and ctx.needs_input_grad[0]:
            grad, row_scale = ctx.saved_tensors
            g_logp = torch.ops.ctpo.policy_loss_backward(grad_loss, grad, row_scale, ctx.logp_dtype)
        return (g_logp,) + (None,) * 5

    torch.library.register_autograd("ctpo::policy_loss", backward, setup_context=setup_context)
    _registered = True


def op_config(ratio, lower, upper, dual, power, delta_max, log_w_max, agg, num_tokens=None, num_seqs=None, loss_scale_factor=None):
    """The op's `config` list (CONFIG order): ratio and agg by name (RATIO_CODES, AGG_CODES) or code; a count that is
    None (the batch's own) is NaN."""
    nan = math.nan
    return [RATIO_CODES.get(ratio, ratio), lower, upper, dual, power, delta_max, log_w_max, AGG_CODES.get(agg, agg),
            nan if num_tokens is None else num_tokens, nan if num_seqs is None else num_seqs,
            nan if loss_scale_factor is None else loss_scale_factor]  # fmt: skip


def check_logp_max(name, largest):
    """ValueError if `largest`, the largest value of a log-prob input at a mask=1 position, is above LOGP_MARGIN."""
    if largest > LOGP_MARGIN:
        raise ValueError(
            f"{name}: expected log-probabilities (<= 0, up to a rounding margin of {LOGP_MARGIN}) at mask=1 positions, "
            f"got a largest value of {largest:.6g}: probabilities or logits?"
        )


_warned = False
SG_ONLY = "the fused kernel implements the stop-gradient form only; stop_gradient=False is a Python teaching option (backend='python')"


def usable(backend, logp, stop_gradient=True):
    """Whether ctpo.policy_loss runs the fused op for `backend` ("ext" | "auto") on logp's device: "ext" raises
    RuntimeError saying why it cannot, "auto" warns once and falls back to Python."""
    global _warned
    if stop_gradient and not torch.compiler.is_compiling() and _module is not None and (logp.is_cpu or (logp.is_cuda and _with_cuda)):
        return True  # eager, loaded, with a kernel for this device: the common case in one line (traced: problem())
    why = problem(logp.device.type) if stop_gradient else SG_ONLY
    if why is not None and backend == "ext":
        raise RuntimeError(f"backend='ext': {why}")
    if why is not None and not _warned:
        warnings.warn(f"backend='auto' falls back to Python: {why}", stacklevel=3)
        _warned = True
    return why is None


def policy_loss(logp, old_logp, adv, mask, rollout_is_weights, ratio, lower, upper, dual, power, delta_max, log_w_max, agg,
                num_tokens=None, num_seqs=None, loss_scale_factor=None):  # fmt: skip
    """The fused policy loss, torch.ops.ctpo.policy_loss: what ctpo.policy_loss(backend="ext") calls, with inputs it
    has checked (types, shapes, devices, knobs); the kernel checks the values in its pass, and this raises what it found.

    logp, old_logp: (B, T) float16/bfloat16/float32/float64; adv: (B,) or (B, T); mask: (B, T) bool;
    rollout_is_weights: (B, T) float or None. ratio: a RATIO_CODES name. The window on log w at response position t
    is [lower t^power, upper t^power] with dual cap dual t^power (PPO: power = 0, lower = log(1 - eps_low), upper =
    log1p(eps_high), dual = log(dual_c)). agg: an AGG_CODES name; num_tokens, num_seqs, loss_scale_factor: numbers,
    0-dim tensors (divided after the op, no host sync) or None (the batch's own). Returns (loss, metrics): the scalar
    loss (float32, float64 for float64 logp; differentiable w.r.t. logp in the stop-gradient form) and
    ctpo.policy_loss's metrics (METRIC_KEYS, 0-dim tensors; log_w (B, T); clipped (B, T) bool). ValueError naming
    an input with NaN or inf, a negative rollout weight or a log-prob above LOGP_MARGIN at a mask=1 position.
    """
    counts = (num_tokens, num_seqs, loss_scale_factor)
    tensor_counts = (
        isinstance(num_tokens, torch.Tensor) or isinstance(num_seqs, torch.Tensor) or isinstance(loss_scale_factor, torch.Tensor)
    )
    given = [1.0 if isinstance(x, torch.Tensor) else x for x in counts] if tensor_counts else counts  # tensors divide after the op
    config = op_config(ratio, lower, upper, dual, power, delta_max, log_w_max, agg, *given)
    loss, n, stats, log_w, clipped, _, _ = torch.ops.ctpo.policy_loss(logp, old_logp, adv, mask, rollout_is_weights, config)
    if torch.compiler.is_compiling():  # no host sync in a graph: an asynchronous assert; traceable views
        torch._assert_async(n[CHECK] == 0, "policy_loss: NaN or inf, a negative rollout weight, or a log-prob above 0 at a mask=1 position")
        metrics = dict(zip(METRIC_KEYS, (*n.unbind()[:N_COUNT_KEYS], *stats.unbind()[:N_METRIC_KEYS])))
    else:  # the same values made in C++ (3x cheaper than unbind's views), or None: it read the check word (a GPU's one host sync)
        metrics = _module.metrics_dict(METRIC_KEYS, n, N_COUNT_KEYS, stats, N_METRIC_KEYS, CHECK)
        if metrics is None:  # the values the kernel found bad, raised as ctpo.check_values does
            bits = n.tolist()[CHECK]
            for bit, message in CHECKS:
                if bits & bit:
                    raise ValueError(message)
            for bit, name, col in LOGP_ABOVE:
                if bits & bit:
                    check_logp_max(name, stats[col].item())
    for x, used in zip(counts, (agg == "token-mean", agg.startswith("seq-"), agg == "seq-mean-token-sum-norm")) if tensor_counts else ():
        if isinstance(x, torch.Tensor) and used:
            loss = loss / x.to(loss.dtype).clamp(min=1)
    metrics["log_w"], metrics["clipped"] = log_w, clipped
    return loss, metrics
