"""ctpo_verl against verl 0.9.1 itself: the registry, verl's agg_loss convention, verl's own `vanilla`, the entry point.

Needs verl (requirements-verl.txt, its own venv: verl pins transformers < 5.11, TRL needs more); skipped without it.
The entry-point test needs this repository installed in that venv: `pip install --no-build-isolation --no-deps -e .`
(builds the C++ extension), or as .ci/run does without the build: `python setup.py egg_info` and a .pth file with
the checkout's path in the venv's site-packages (what an editable install amounts to).
"""

import importlib.metadata
import math
import subprocess
import sys

import pytest
import torch

pytest.importorskip("verl", reason="verl is not installed (requirements-verl.txt, in its own venv)")

from verl.trainer.ppo import core_algos  # noqa: E402
from verl.workers.config import ActorConfig  # noqa: E402

import ctpo  # noqa: E402
import ctpo_verl  # noqa: E402

AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def batch(seed=0, B=6, T=9, dtype=torch.float64, spread=0.3):
    """A micro-batch in verl's layout: (B, T) tensors, right-padded responses, one empty row, per-token advantages."""
    g = torch.Generator().manual_seed(seed)
    old = -5.0 - torch.rand(B, T, generator=g, dtype=dtype) * 3  # log-probs in [-8, -5]: logp stays < 0 after the bumps below
    logp = (old + spread * torch.randn(B, T, generator=g, dtype=dtype)).requires_grad_(True)
    lengths = torch.tensor([T, T - 2, 1, 0, T - 4, 3])[:B]
    mask = torch.arange(T)[None, :] < lengths[:, None]  # (B, T) bool
    adv = torch.randn(B, generator=g, dtype=dtype)[:, None].expand(B, T).clone()  # verl passes (B, T)
    adv[1] = -adv[1].abs()  # both signs present
    adv[0] = adv[0].abs()
    weights = torch.rand(B, T, generator=g, dtype=dtype) * 2  # rollout IS weights, >= 0
    return old, logp, adv, mask, weights


def actor_config(global_batch_info=None, **kw):
    cfg = ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, **kw)
    cfg.global_batch_info.update(global_batch_info or {})
    return cfg


BATCH_INFOS = {
    "local": {},  # verl's default: this micro-batch's own counts, dp_size 1
    "global-dp1": dict(dp_size=1, batch_num_tokens=57, global_batch_size=11, loss_scale_factor=None),
    "global-dp4": dict(dp_size=4, batch_num_tokens=203, global_batch_size=24, loss_scale_factor=13),
    "tiny-global": dict(dp_size=4, batch_num_tokens=3, global_batch_size=2, loss_scale_factor=None),  # counts < dp_size
}


def grad(loss, x):
    (g,) = torch.autograd.grad(loss, x, retain_graph=True)
    return g


# -----------------------------------------------------------------------------
# every registered name == ctpo.policy_loss with the documented mapping == verl's agg_loss of ctpo's token losses


@pytest.mark.parametrize("name", sorted(ctpo_verl.PRESETS))
@pytest.mark.parametrize("info", sorted(BATCH_INFOS))
@pytest.mark.parametrize("weighted", [False, True])
def test_registered_loss_equals_ctpo_and_verl_agg(name, info, weighted):
    fn = core_algos.get_policy_loss_fn(name)
    method = ctpo_verl.PRESETS[name]
    cfg = actor_config(BATCH_INFOS[info], clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0)
    old, logp, adv, mask, w = batch(seed=sorted(ctpo_verl.PRESETS).index(name) * 10 + sorted(BATCH_INFOS).index(info))
    w = w if weighted else None
    knobs = ctpo_verl.ratio_window_knobs(method, cfg)
    if ctpo.method_config(method)["clip"] == "ratio":
        assert knobs == dict(eps_low=0.2, eps_high=0.28, dual_c=3.0)  # verl's clip ratios reach the preset
    else:
        assert knobs == {}  # the adaptive presets keep the paper's window
    gi = BATCH_INFOS[info]
    dp = gi.get("dp_size", 1)
    for mode in AGG_MODES:
        loss, metrics = fn(old, logp, adv, mask, mode, cfg, w)
        # (a) ctpo.policy_loss, called by hand with the mapping the docs state
        ref, ref_m = ctpo.policy_loss(
            logp,
            old,
            adv,
            mask,
            method=method,
            agg=mode,
            backend=ctpo_verl.default_backend(method),
            num_tokens=gi.get("batch_num_tokens"),
            num_seqs=gi.get("global_batch_size"),
            loss_scale_factor=gi.get("loss_scale_factor"),
            rollout_is_weights=w,
            **knobs,
        )
        ref = ref * dp
        torch.testing.assert_close(loss, ref, rtol=0, atol=0)
        torch.testing.assert_close(grad(loss, logp), grad(ref, logp), rtol=0, atol=0)
        # (b) verl's own agg_loss over ctpo's per-token losses (python reference), with verl's global batch info
        tok, *_ = ctpo.token_losses(logp, old, adv, mask, ctpo.method_config(method, **knobs))
        if w is not None:
            tok = tok * w
        expect = core_algos.agg_loss(loss_mat=tok, loss_mask=mask, loss_agg_mode=mode, **gi)
        torch.testing.assert_close(loss, expect.to(loss.dtype))
        torch.testing.assert_close(grad(loss, logp), grad(expect, logp))
        # metrics: verl's style, plain floats
        assert all(type(v) is float for v in metrics.values()), metrics
        assert {"actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower", "actor/ctpo/clip_frac_high"} <= set(metrics)
        assert metrics["actor/ctpo/ratio_max"] == float(ref_m["ratio_max"])
        assert metrics["actor/pg_clipfrac"] == pytest.approx(float(ref_m["clip_frac_high"] + ref_m["clip_frac_low"]))


def test_the_presets_clip_and_see_ratios_off_one():
    # the equality test above means something only if the batch is off-policy enough to clip
    old, logp, adv, mask, _ = batch(spread=0.5)
    for name in ctpo_verl.PRESETS:
        if name == "ctpo-gspo":  # GSPO's window is 3e-4 wide; verl's default 0.2 / 0.28 barely clips a mean
            continue
        _, m = core_algos.get_policy_loss_fn(name)(old, logp, adv, mask, "token-mean", actor_config(), None)
        assert m["actor/ctpo/clip_frac"] > 0, name
        assert m["actor/ctpo/ratio_max"] > 1 > m["actor/ctpo/ratio_min"], name


def test_dp_size_above_one_needs_global_counts_like_verl():
    old, logp, adv, mask, _ = batch()
    fn = core_algos.get_policy_loss_fn("ctpo")
    for mode, missing in (("token-mean", "batch_num_tokens"), ("seq-mean-token-mean", "global_batch_size")):
        with pytest.raises(ValueError, match=missing):
            fn(old, logp, adv, mask, mode, actor_config({"dp_size": 2}), None)
        with pytest.raises(ValueError):  # verl refuses the same
            core_algos.agg_loss(loss_mat=logp, loss_mask=mask, loss_agg_mode=mode, dp_size=2)


def test_bad_input_is_refused_naming_it():
    old, logp, adv, mask, w = batch()
    fn = core_algos.get_policy_loss_fn("ctpo")
    with pytest.raises(ValueError, match="agg"):
        fn(old, logp, adv, mask, "seq-sum", actor_config(), None)
    with pytest.raises(ValueError, match="rollout_is_weights"):
        fn(old, logp, adv, mask, "token-mean", actor_config(), -w)
    with pytest.raises(ValueError, match="dp_size"):
        fn(old, logp, adv, mask, "token-mean", actor_config({"dp_size": 0}), None)
    with pytest.raises(ValueError, match="clip_ratio_c"):  # verl's clip_ratio_c must be > 1, as for its vanilla
        core_algos.get_policy_loss_fn("ctpo-grpo")(old, logp, adv, mask, "token-mean", actor_config(clip_ratio_c=0.5), None)


def test_register_checks_knobs_and_names():
    with pytest.raises(TypeError, match="clip_hihg"):
        ctpo_verl.register("ctpo-typo", "ctpo", clip_hihg=0.1)
    with pytest.raises(ValueError, match="power"):
        ctpo_verl.register("ctpo-nan", "ctpo", power=float("nan"))
    with pytest.raises(ValueError, match="vanilla"):
        ctpo_verl.register("vanilla", "grpo")  # never replaces verl's own losses
    assert "ctpo-typo" not in core_algos.POLICY_LOSS_REGISTRY and "ctpo-nan" not in core_algos.POLICY_LOSS_REGISTRY
    fn = ctpo_verl.register("ctpo-test-wide", "ctpo", clip_high=0.1)
    try:
        old, logp, adv, mask, _ = batch()
        loss, _ = core_algos.get_policy_loss_fn("ctpo-test-wide")(old, logp, adv, mask, "token-mean", actor_config(), None)
        ref, _ = ctpo.policy_loss(logp, old, adv, mask, method="ctpo", backend="auto", clip_high=0.1)
        torch.testing.assert_close(loss, ref, rtol=0, atol=0)
        assert core_algos.get_policy_loss_fn("ctpo-test-wide") is fn
    finally:
        core_algos.POLICY_LOSS_REGISTRY.pop("ctpo-test-wide")
        ctpo_verl.REGISTERED.pop("ctpo-test-wide")


def test_a_plain_dict_config_works():
    # verl's legacy workers pass an omegaconf DictConfig: attribute and .get access, like ActorConfig
    from omegaconf import OmegaConf

    old, logp, adv, mask, _ = batch()
    info = dict(dp_size=2, batch_num_tokens=40, global_batch_size=9)
    dc = OmegaConf.create(dict(clip_ratio=0.2, clip_ratio_low=None, clip_ratio_high=0.28, clip_ratio_c=3.0, global_batch_info=info))
    loss, _ = core_algos.get_policy_loss_fn("ctpo-grpo")(old, logp, adv, mask, "token-mean", dc, None)
    ref, _ = core_algos.get_policy_loss_fn("ctpo-grpo")(old, logp, adv, mask, "token-mean", actor_config(info, clip_ratio_high=0.28), None)
    torch.testing.assert_close(loss, ref, rtol=0, atol=0)


# -----------------------------------------------------------------------------
# verl's own vanilla PPO loss == ctpo-grpo where the definitions agree


@pytest.mark.parametrize("info", sorted(BATCH_INFOS))
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_verl_vanilla_equals_ctpo_grpo(info, weighted, dtype):
    cfg = actor_config(BATCH_INFOS[info], clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0)
    old, logp, adv, mask, w = batch(seed=7, dtype=dtype, spread=0.3)
    bump = torch.zeros_like(logp)
    bump[0, :2] = 0.5  # A > 0 row: ratio above 1 + 0.28 (the window's upper edge)
    bump[1, :2] = 1.5  # A < 0 row: ratio above clip_ratio_c = 3 (the dual clip)
    bump[1, 2:4] = -0.6  # A < 0 row: ratio below 1 - 0.2 (the window's lower edge)
    logp = (logp.detach() + bump).requires_grad_(True)
    w = w if weighted else None
    vanilla, ours = core_algos.get_policy_loss_fn("vanilla"), core_algos.get_policy_loss_fn("ctpo-grpo")
    for mode in AGG_MODES:
        lv, mv = vanilla(old, logp, adv, mask, mode, cfg, w)
        lo, mo = ours(old, logp, adv, mask, mode, cfg, w)
        torch.testing.assert_close(lo, lv)
        torch.testing.assert_close(grad(lo, logp), grad(lv, logp))
        for k in ("actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"):
            assert mo[k] == pytest.approx(mv[k], rel=1e-6, abs=1e-12), k
    _, m = ours(old, logp, adv, mask, "token-mean", cfg, None)
    assert m["actor/ctpo/clip_frac_high"] > 0 and m["actor/ctpo/clip_frac_low"] > 0 and m["actor/pg_clipfrac_lower"] > 0


def test_where_vanilla_and_ctpo_grpo_differ_the_log_weight_cap():
    # ctpo.py caps log w at log_w_max = 10 (the paper's guard against exp overflow of a long cumulative sum);
    # verl's vanilla only clamps delta to +-20. They differ only on an A < 0 token with delta > 10 that the dual
    # clip does not catch, i.e. clip_ratio_c > e^10. With log_w_max = 20 they agree there too.
    old = torch.tensor([[-20.0, -1.0]], dtype=torch.float64)
    logp = (old + torch.tensor([[15.0, 0.1]], dtype=torch.float64)).requires_grad_(True)  # log-probs -5, -0.9
    adv, mask = torch.tensor([[-1.0, -1.0]], dtype=torch.float64), torch.ones(1, 2, dtype=torch.bool)
    cfg = actor_config(clip_ratio_c=1e8)
    lv, _ = core_algos.get_policy_loss_fn("vanilla")(old, logp, adv, mask, "token-sum", cfg, None)
    lo, _ = core_algos.get_policy_loss_fn("ctpo-grpo")(old, logp, adv, mask, "token-sum", cfg, None)
    assert lv.item() == pytest.approx(math.exp(15.0) + math.exp(0.1))
    assert lo.item() == pytest.approx(math.exp(10.0) + math.exp(0.1))
    lo20, _ = ctpo_verl.policy_loss(old, logp, adv, mask, "token-sum", cfg, None, method="grpo", log_w_max=20.0)
    torch.testing.assert_close(lo20, lv)


# -----------------------------------------------------------------------------
# the entry point: how the registration reaches verl's Ray workers


def test_entry_point_is_declared_and_loaded_by_import_verl():
    eps = [ep for ep in importlib.metadata.entry_points(group="verl.plugins") if ep.value == "ctpo_verl"]
    assert eps, "no verl.plugins entry point for ctpo_verl: install this repository (see this file's docstring)"
    # a fresh interpreter that only imports verl (as a Ray worker does) gets the ctpo losses
    code = "import verl\nfrom verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY as R\nprint(sorted(k for k in R if 'ctpo' in k))"
    # cwd="/": ctpo_verl must come from the installed package, not from this checkout
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == str(sorted(ctpo_verl.PRESETS)), out.stdout + out.stderr
