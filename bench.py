"""Benchmark forward+backward of the policy loss: the Python reference, torch.compile of it, the fused extension
(csrc/), and a memory floor; all in one process, median of ~30 runs per backend (three rounds of back-to-back
blocks, so each backend is timed in its own steady cache state and machine noise is spread over all of them).
Two tables:

1. the bare op (--method, default ctpo): per-token loss, summed, and its gradient; also the max abs difference
   ext vs Python of the loss and of the gradient.
2. end to end (--e2e-methods, default ctpo grpo gspo sequence): ctpo.policy_loss(...) forward + backward with
   its default metrics (what a training loop calls), backend="python" vs backend="ext", and torch.compile of the
   Python path where it compiles (fullgraph=False: the reference's input checks break the graph; by default
   only at 256x4096, --e2e-compile-sizes), next to the bare op for the same method; ext/bare is measured
   paired (the two alternate call by call, median of the pairs' ratios), so machine drift cancels.

    python bench.py                       # the default sizes, float32 and bfloat16: both tables
    python bench.py --json                # the same as JSON (a list of objects)
    python bench.py --sizes 256x4096 --dtypes float32 --repeats 50
    python bench.py --no-compile          # skip torch.compile (its first call compiles, ~10-60 s per shape)
    python bench.py --breakdown           # also time the ext's parts (forward op, backward op) and count policy_loss's ops
    python bench.py --no-e2e / --e2e-only # one of the two tables
    python bench.py --device cuda         # on a GPU (CUDA-synchronised timings; compile = Inductor's Triton)

What is timed in table 1, per (B, T, dtype), each as  loss = per_token_loss.sum() / n_tokens;  grad = d loss / d logp:
  python   ctpo.token_losses (eager), the reference ctpo.policy_loss(backend="python") runs
  compile  torch.compile(fullgraph=True) of that same function (Inductor: C++/OpenMP/AVX-512 on CPU)
  ext      the fused op, torch.ops.ctpo.policy_loss (agg token-mean: its loss is sum / n) + policy_loss_backward
  floor    the bytes a fused forward+backward must move, streamed once by plain torch kernels into
           preallocated buffers: logp -> a float32 loss buffer (copy_), old_logp -> a float32 log_w buffer
           (copy_), mask -> a bool buffer (copy_: the mask read, and the op's 1-byte `clipped` output written),
           and the gradient written once (fill_). That is (2 * itemsize + 1) bytes read and (8 + 1 + itemsize)
           written per token: what the op must read and write, with no compute, no autograd, no reduction, no
           allocation.
GB/s is the op's minimal bytes, (2 * itemsize + 1) + (8 + 1 + itemsize) per token, divided by each time (an
effective bandwidth: the ext moves more: the backward reads the loss again).
Inputs: logp ~ -1 + 0.05 N(0,1), old_logp = logp + 0.05 N(0,1) (so the cumulative ratio drifts and some
tokens clip), advantages one per row (a (B,) tensor expanded, as policy_loss passes it), mask = variable
length responses (lengths uniform in [T/2, T]) with a tool-output hole in every fourth row.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch

import ctpo
import ctpo_ext

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_SIZES = ["16x1024", "64x4096", "256x4096", "256x8192"]
E2E_METHODS = ["ctpo", "grpo", "gspo", "sequence"]


DEVICE = "cpu"  # set by --device


def make_inputs(B, T, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    logp = -1.0 + 0.05 * torch.randn(B, T, generator=g)
    old = (logp + 0.05 * torch.randn(B, T, generator=g)).to(dtype)
    logp = logp.to(dtype)
    lens = torch.randint(T // 2, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lens[:, None]
    for i in range(0, B, 4):  # a tool-output span inside the response: masked, does not advance t
        a = int(torch.randint(0, max(1, T // 2), (1,), generator=g))
        mask[i, a : a + max(1, T // 16)] = False
    adv = torch.randn(B, generator=g).to(DEVICE)
    return logp.to(DEVICE), old.to(DEVICE), adv[:, None].expand(B, T), mask.to(DEVICE)


def timeit(fn):
    """ms of one call; on a GPU from a synchronised start to the end of its last kernel (launch overhead included)."""
    cuda = DEVICE == "cuda"
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


def cpu_jiffies():
    """(busy jiffies of the whole machine, of this process): to tell how much other processes ran meanwhile."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            w = f.read().rsplit(")", 1)[1].split()
        return v[0] + v[1] + v[2] + v[5] + v[6] + v[7], int(w[11]) + int(w[12])
    except OSError:
        return None


def op_args(cfg, B, T):
    """The op's `config` list for a method's cfg, agg = token-mean, the batch's own counts (ctpo_ext.op_config)."""
    return (ctpo_ext.op_config(*ctpo.ext_knobs(cfg), "token-mean"),)


def run_blocks(fns, repeats, warmup=3, python_names=("python",)):
    """Warm up, then time rounds of back-to-back blocks of each fn. Returns ({name: [ms]}, other_load)."""
    warm_ms = {}
    for name, f in fns.items():  # compile, warm up
        for _ in range(warmup):
            warm_ms[name] = timeit(f)
    # Rounds of blocks: each backend runs a block of back-to-back calls, and the rounds interleave the backends so
    # that a burst of machine noise does not hit one backend only. A block starts with untimed calls for >= 5 ms
    # (at least 2): on a CPU, the first ~10 calls of a small size after another backend's block run up to 3x slower
    # while caches and the allocator settle, and which backend follows the slow Python one would otherwise decide
    # a ratio. So each is measured in its own steady state, as a training loop calling it repeatedly would see.
    times = {name: [] for name in fns}
    rounds = 3
    per_block = max(1, -(-repeats // rounds))
    j0, t0 = cpu_jiffies(), time.perf_counter()
    for _ in range(rounds):
        for name, f in fns.items():
            for _ in range(max(2, min(50, math.ceil(5 / max(warm_ms[name], 1e-3))))):
                f()
            n_block = per_block if name not in python_names else max(2, min(per_block, int(1500 / warm_ms[name])))  # <= ~1.5 s
            for _ in range(n_block):
                times[name].append(timeit(f))
    j1, wall = cpu_jiffies(), time.perf_counter() - t0
    load = None
    if j0 is not None and j1 is not None:  # CPU share other processes took during the timed runs (noise indicator)
        hz, ncpu = os.sysconf("SC_CLK_TCK"), os.cpu_count() or 1
        load = max(0.0, ((j1[0] - j0[0]) - (j1[1] - j0[1])) / hz / (wall * ncpu))
    return times, load


def run_case(B, T, dtype_name, method, repeats, use_compile, breakdown=False, warmup=3):
    dtype = DTYPES[dtype_name]
    cfg = ctpo.method_config(method)
    logp, old, adv, mask = make_inputs(B, T, dtype)
    n = mask.sum().clamp(min=1).to(torch.float32)
    x = logp.clone().requires_grad_()
    args = op_args(cfg, B, T)

    def python_loss(lp, ol, a, m):
        return ctpo.token_losses(lp, ol, a, m, cfg)[0].sum() / n

    def ext_loss(lp, ol, a, m):
        return torch.ops.ctpo.policy_loss(lp, ol, a, m, None, *args)[0]

    def fwd_bwd(loss_fn):
        def f():
            (g,) = torch.autograd.grad(loss_fn(x, old, adv, mask), x)
            return g

        return f

    itemsize = logp.element_size()
    loss_buf = torch.empty(B, T, dtype=torch.float32, device=DEVICE)
    lw_buf = torch.empty(B, T, dtype=torch.float32, device=DEVICE)
    mask_buf = torch.empty(B, T, dtype=torch.bool, device=DEVICE)
    grad_buf = torch.empty(B, T, dtype=dtype, device=DEVICE)

    def floor():
        loss_buf.copy_(logp)
        lw_buf.copy_(old)
        mask_buf.copy_(mask)
        grad_buf.fill_(0.0)

    fns = {"python": fwd_bwd(python_loss), "ext": fwd_bwd(ext_loss), "floor": floor}
    if use_compile:
        fns["compile"] = fwd_bwd(torch.compile(python_loss, fullgraph=True, dynamic=False))
    if breakdown:  # the parts of the ext's fwd+bwd, each alone: the forward op, the backward op
        out0 = torch.ops.ctpo.policy_loss(logp, old, adv, mask, None, *args)
        g0 = torch.ones((), device=DEVICE)  # the seed gradient of the scalar loss
        fns["ext_fwd_op"] = lambda: torch.ops.ctpo.policy_loss(logp, old, adv, mask, None, *args)
        fns["ext_bwd_op"] = lambda: torch.ops.ctpo.policy_loss_backward(g0, out0[5], out0[6], dtype)

    # correctness: ext vs the Python reference (the loss, the gradient, log w)
    lp_ref, lw_ref, _, _ = ctpo.token_losses(x, old, adv, mask, cfg)
    (g_ref,) = torch.autograd.grad(lp_ref.sum() / n, x)
    out = torch.ops.ctpo.policy_loss(x, old, adv, mask, None, *args)
    loss_ext, lw_ext = out[0], out[3]
    (g_ext,) = torch.autograd.grad(loss_ext, x)
    diff_fwd = (lp_ref.detach().double().sum() / n - loss_ext.detach().double()).abs().item()
    diff_grad = (g_ref.float() - g_ext.float()).abs().max().item()
    logw_equal = bool(torch.equal(lw_ref.detach(), lw_ext))

    times, load = run_blocks(fns, repeats, warmup)
    floor_bytes = B * T * ((2 * itemsize + 1) + (8 + 1 + itemsize))
    row = {"B": B, "T": T, "dtype": dtype_name, "method": method}
    for name in ("python", "compile", "ext", "floor"):
        ts = times.get(name)
        row[f"{name}_ms"] = statistics.median(ts) if ts else None
        row[f"{name}_min_ms"] = min(ts) if ts else None
        row[f"{name}_GBps"] = floor_bytes / (statistics.median(ts) * 1e6) if ts else None
    row["floor_bytes"] = floor_bytes
    row["speedup_vs_python"] = row["python_ms"] / row["ext_ms"]
    row["speedup_vs_compile"] = row["compile_ms"] / row["ext_ms"] if use_compile else None
    row["ext_over_floor"] = row["ext_ms"] / row["floor_ms"]
    row["max_abs_diff_fwd"] = diff_fwd
    row["max_abs_diff_grad"] = diff_grad
    row["log_w_bitwise_equal"] = logw_equal
    if breakdown:
        for name in ("ext_fwd_op", "ext_bwd_op"):
            row[f"{name}_ms"] = statistics.median(times[name])
        row["ext_rest_ms"] = row["ext_ms"] - row["ext_fwd_op_ms"] - row["ext_bwd_op_ms"]
    row["other_load"] = load
    return row


def run_e2e(B, T, dtype_name, method, repeats, use_compile, warmup=3):
    """policy_loss forward + backward with default metrics: python, ext, compile of python; and the bare op."""
    dtype = DTYPES[dtype_name]
    cfg = ctpo.method_config(method)
    logp, old, adv, mask = make_inputs(B, T, dtype)
    adv = adv[:, 0].contiguous()  # one advantage per row, as a training loop passes it
    x = logp.clone().requires_grad_()
    args = op_args(cfg, B, T)

    def policy(backend):
        def loss_fn(lp):
            return ctpo.policy_loss(lp, old, adv, mask, method=method, backend=backend)

        return loss_fn

    def fwd_bwd(loss_fn):
        def f():
            loss, metrics = loss_fn(x)
            (g,) = torch.autograd.grad(loss, x)
            return g, metrics

        return f

    def bare():
        (g,) = torch.autograd.grad(torch.ops.ctpo.policy_loss(x, old, adv, mask, None, *args)[0], x)
        return g

    fns = {"python": fwd_bwd(policy("python")), "ext": fwd_bwd(policy("ext")), "bare": bare}
    compile_note = None
    if use_compile:
        try:
            compiled = fwd_bwd(torch.compile(policy("python")))
            compiled()  # compiles (graph breaks at the reference's data-dependent input checks)
            fns["compile"] = compiled
        except Exception as e:  # report, do not fail the benchmark
            compile_note = f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"
    (g_p, m_p), (g_e, m_e) = fns["python"](), fns["ext"]()
    times, load = run_blocks(fns, repeats, warmup)
    row = {"B": B, "T": T, "dtype": dtype_name, "method": method}
    for name in ("python", "compile", "ext", "bare"):
        ts = times.get(name)
        row[f"{name}_ms"] = statistics.median(ts) if ts else None
        row[f"{name}_min_ms"] = min(ts) if ts else None
    row["ext_x_python"] = row["python_ms"] / row["ext_ms"]
    row["ext_over_bare_min"] = row["ext_min_ms"] / row["bare_min_ms"]
    row["ext_x_compile"] = row["compile_ms"] / row["ext_ms"] if row["compile_ms"] else None
    # ext / bare, paired: the two alternate call by call (the same op inside, so the same cache state), and the
    # ratio is the median of the pairs' ratios: a slow stretch of a shared machine hits both calls of a pair
    ext_fn, bare_fn, ratios = fns["ext"], fns["bare"], []
    for i in range(2 * repeats):
        if i % 2:
            t_bare, t_ext = timeit(bare_fn), timeit(ext_fn)
        else:
            t_ext, t_bare = timeit(ext_fn), timeit(bare_fn)
        ratios.append(t_ext / t_bare)
    row["ext_over_bare"] = statistics.median(ratios)
    row["max_abs_diff_grad"] = (g_p.float() - g_e.float()).abs().max().item()
    row["same_clip_counts"] = all(torch.equal(m_p[k], m_e[k]) for k in ("n_tokens", "n_clip_high", "n_clip_low", "n_clip_dual"))
    row["compile_note"] = compile_note
    row["other_load"] = load
    with OpCounter() as f_ops:  # the compute ops policy_loss(backend="ext") dispatches around the fused op (CPU: exact)
        loss, _ = ctpo.policy_loss(x, old, adv, mask, method=method, backend="ext")
    with OpCounter() as b_ops:
        torch.autograd.grad(loss, x)
    row["fwd_ops"], row["bwd_ops"] = f_ops.ops, b_ops.ops
    return row


class OpCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the compute ops dispatched (views, whose outputs alias an input, are not counted)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not any(r.alias_info is not None for r in func._schema.returns):
            self.ops.append(str(func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def print_table(rows, file=sys.stdout):
    head = (
        f"{'B':>4} {'T':>6} {'dtype':>8} | {'python':>8} {'compile':>8} {'ext':>7} {'floor':>7} ms | "
        f"{'x py':>6} {'x comp':>6} {'ext/floor':>9} | {'min: ext':>8} {'floor':>6} | {'GB/s ext':>8} {'floor':>6} | "
        f"{'diff fwd':>8} {'diff grad':>9} {'log_w ==':>8} {'noise':>5}"
    )
    print(head, file=file)
    print("-" * len(head), file=file)
    for r in rows:
        print(
            f"{r['B']:>4} {r['T']:>6} {r['dtype']:>8} | {fmt(r['python_ms'], '8.3f')} {fmt(r['compile_ms'], '8.3f')} "
            f"{fmt(r['ext_ms'], '7.3f')} {fmt(r['floor_ms'], '7.3f')} ms | {fmt(r['speedup_vs_python'], '6.1f')} "
            f"{fmt(r['speedup_vs_compile'], '6.1f')} {fmt(r['ext_over_floor'], '9.2f')} | {fmt(r['ext_min_ms'], '8.3f')} "
            f"{fmt(r['floor_min_ms'], '6.3f')} | {fmt(r['ext_GBps'], '8.1f')} {fmt(r['floor_GBps'], '6.1f')} | "
            f"{r['max_abs_diff_fwd']:8.1e} {r['max_abs_diff_grad']:9.1e} {str(r['log_w_bitwise_equal']):>8} "
            f"{fmt(r.get('other_load'), '5.0%')}",
            file=file,
        )


def print_breakdown(rows, file=sys.stdout):
    print("\nwhere the ext's fwd+bwd time goes (medians, ms; rest = autograd + Python glue + the sum / n, by difference):", file=file)
    head = f"{'B':>4} {'T':>6} {'dtype':>8} | {'fwd+bwd':>8} {'fwd op':>7} {'bwd op':>7} {'rest':>6} | {'floor':>6}"
    print(head, file=file)
    for r in rows:
        print(
            f"{r['B']:>4} {r['T']:>6} {r['dtype']:>8} | {r['ext_ms']:8.3f} {r['ext_fwd_op_ms']:7.3f} "
            f"{r['ext_bwd_op_ms']:7.3f} {r['ext_rest_ms']:6.3f} | {r['floor_ms']:6.3f}",
            file=file,
        )


def print_e2e(rows, file=sys.stdout):
    print("\nend to end: ctpo.policy_loss(...) forward + backward with default metrics (medians, ms)", file=file)
    head = (
        f"{'method':>8} {'B':>4} {'T':>6} {'dtype':>8} | {'python':>8} {'compile':>8} {'ext':>7} {'bare op':>7} | "
        f"{'ext x py':>8} {'x comp':>6} {'ext/bare':>8} | {'min: ext':>8} {'bare':>6} {'ratio':>5} | "
        f"{'diff grad':>9} {'clips ==':>8} {'ops f/b':>7} {'noise':>5}"
    )
    print(head, file=file)
    print("-" * len(head), file=file)
    for r in rows:
        print(
            f"{r['method']:>8} {r['B']:>4} {r['T']:>6} {r['dtype']:>8} | {fmt(r['python_ms'], '8.3f')} {fmt(r['compile_ms'], '8.3f')} "
            f"{fmt(r['ext_ms'], '7.3f')} {fmt(r['bare_ms'], '7.3f')} | {fmt(r['ext_x_python'], '8.1f')} {fmt(r['ext_x_compile'], '6.1f')} "
            f"{fmt(r['ext_over_bare'], '8.2f')} | {fmt(r['ext_min_ms'], '8.3f')} {fmt(r['bare_min_ms'], '6.3f')} "
            f"{fmt(r['ext_over_bare_min'], '5.2f')} | {r['max_abs_diff_grad']:9.1e} {str(r['same_clip_counts']):>8} "
            f"{len(r['fwd_ops']):>3}/{len(r['bwd_ops']):<3} {fmt(r.get('other_load'), '5.0%')}",
            file=file,
        )
    if rows:
        print(f"ops f/b: compute ops of policy_loss(ext) forward / backward, e.g. {rows[0]['fwd_ops']} / {rows[0]['bwd_ops']}", file=file)
        print(
            "ext/bare: the median ratio over pairs of calls, the two alternating (machine drift cancels in a pair); "
            "min: the fastest call of each in the blocks above, and their ratio",
            file=file,
        )
    for r in rows:
        if r["compile_note"]:
            print(f"compile of the python path, {r['method']} {r['B']}x{r['T']}: {r['compile_note']}", file=file)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, help="BxT, e.g. 256x4096 (default: %(default)s)")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=sorted(DTYPES))
    ap.add_argument("--method", default="ctpo", choices=sorted(ctpo.METHODS), help="the bare-op table's method")
    ap.add_argument("--e2e-methods", nargs="+", default=E2E_METHODS, choices=sorted(ctpo.METHODS))
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end policy_loss table")
    ap.add_argument("--e2e-only", action="store_true", help="only the end-to-end policy_loss table")
    ap.add_argument(
        "--e2e-compile-sizes", nargs="*", default=["256x4096"], help="sizes whose end-to-end row also compiles the python path (slow)"
    )
    ap.add_argument("--repeats", type=int, default=30, help="timed runs per backend (median reported)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    ap.add_argument("--json", action="store_true", help="print JSON (a list of objects) instead of the table")
    ap.add_argument("--breakdown", action="store_true", help="also time the ext's parts: forward op, .sum(), backward op")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the tensors live (default: %(default)s)")
    ap.add_argument(
        "--cpu-kernel", default="auto", choices=["auto", "vec", "scalar"], help="the CPU row kernel the op runs (auto: avx512 where built)"
    )
    args = ap.parse_args(argv)

    global DEVICE
    DEVICE = args.device
    mod = ctpo_ext.load()
    mod.set_cpu_kernel(args.cpu_kernel)
    if DEVICE == "cuda" and not (torch.cuda.is_available() and mod.with_cuda()):
        ap.error("--device cuda: needs a visible GPU and the extension built with its CUDA kernels (TORCH_CUDA_ARCH_LIST, CUDA_HOME)")
    if DEVICE == "cuda":  # an idle GPU runs at a low clock: keep it busy ~1 s so that the first case is not timed ramping up
        a = torch.randn(4096, 4096, device="cuda")
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            a = (a @ a).tanh_()
        torch.cuda.synchronize()
    rows, e2e = [], []
    for size in args.sizes:
        B, T = (int(v) for v in size.lower().split("x"))
        for dt in args.dtypes:
            if not args.e2e_only:
                rows.append(run_case(B, T, dt, args.method, args.repeats, not args.no_compile, args.breakdown))
            if not args.no_e2e and dt == "float32":
                for method in args.e2e_methods:
                    use_compile = not args.no_compile and size in args.e2e_compile_sizes
                    e2e.append(run_e2e(B, T, dt, method, args.repeats, use_compile))
            if not args.json:
                print(f"done {size} {dt}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(rows + e2e, indent=1))
        return rows + e2e
    where = (
        f"GPU {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}"
        if DEVICE == "cuda"
        else f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"ext CPU path {mod.compiled_cpu_path() if args.cpu_kernel == 'auto' else args.cpu_kernel}, "
        f"output pool {os.environ.get('CTPO_EXT_POOL_MB', '256')} MB"
    )
    print(f"torch {torch.__version__}, {where}; method {args.method}; fwd+bwd of sum(per-token loss)/n, median of ~{args.repeats} runs")
    print(
        "floor = logp->loss buf, old_logp->log_w buf, mask->bool buf (copy_), grad buf fill_: the op's minimal bytes, streamed once; "
        "load: " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    if rows:
        print_table(rows)
    if args.breakdown and rows:
        print_breakdown(rows)
    if e2e:
        print_e2e(e2e)
    print(
        "ms: median of the interleaved runs (min: the fastest); x py / x comp / ext/floor: ratios of medians; noise: the CPU share "
        "other processes took meanwhile (timings with more than a few % are not trustworthy on a 2-core machine)"
    )
    return rows + e2e


if __name__ == "__main__":
    main()
