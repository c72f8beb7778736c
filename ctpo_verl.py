"""CTPO as a verl policy loss. Importing this module registers the ctpo presets with verl's registry.

    import ctpo_verl  # or nothing: `pip install -e .` adds the `verl.plugins` entry point, and `import verl` loads it
    # verl config:  actor_rollout_ref.actor.policy_loss.loss_mode=ctpo   (or ctpo-fixed, ctpo-geomean, ctpo-grpo, ...)

Registered names (REGISTERED): ctpo, ctpo-fixed, ctpo-geomean (the paper's loss and its two variants) and
ctpo-grpo, ctpo-gspo, ctpo-sequence (ctpo.py's ratio-window relatives, prefixed so that they never collide with
verl's own `vanilla`, `gspo`, ...). Each is a verl policy loss,

    fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights) -> (loss, metrics)

with verl's argument order (old first), (B, T) advantages, every verl loss_agg_mode, and verl's `agg_loss`
convention for the global batch: the loss times dp_size, over the global token / sequence counts of
config.global_batch_info. The loss itself is ctpo.policy_loss; this file only maps the arguments.

The ratio-window presets (ctpo-grpo, ctpo-gspo, ctpo-sequence) take verl's clip_ratio_low / clip_ratio_high
(falling back to clip_ratio) and clip_ratio_c as eps_low / eps_high / dual_c, as verl's own losses do. The
adaptive presets (ctpo*) keep the paper's clip_low / clip_high / clip_c / power: verl's structured
PolicyLossConfig has no place for them, so a different setting is a new name, registered in your own plugin:

    ctpo_verl.register("ctpo-wide", "ctpo", clip_high=0.1)

Ray workers are separate processes: a registration reaches them through the `verl.plugins` entry point
(setup.py), which `import verl` loads in every process; importing this module in the driver alone is not enough.
"""

import torch
from verl.trainer.ppo import core_algos

import ctpo

PRESETS = {  # verl loss_mode name -> ctpo.py method
    "ctpo": "ctpo",
    "ctpo-fixed": "ctpo-fixed",
    "ctpo-geomean": "ctpo-geomean",
    "ctpo-grpo": "grpo",
    "ctpo-gspo": "gspo",
    "ctpo-sequence": "sequence",
}
REGISTERED = {}  # name -> (method, knobs), everything this module registered


# -----------------------------------------------------------------------------
# verl's config -> ctpo's arguments


def _get(config, key, default=None):
    # ActorConfig (verl's BaseConfig) and omegaconf DictConfig both have .get; a plain dict too
    if config is None:
        return default
    value = config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)
    return default if value is None else value


def ratio_window_knobs(method, config, **knobs):
    """verl's clip_ratio_low / clip_ratio_high (else clip_ratio) and clip_ratio_c as eps_low / eps_high / dual_c,
    for the presets with PPO's ratio window; {} for the adaptive (ctpo*) presets or without a config."""
    if config is None or ctpo.method_config(method, **knobs)["clip"] != "ratio":
        return {}
    eps = _get(config, "clip_ratio", 0.2)
    knobs = dict(
        eps_low=_get(config, "clip_ratio_low", eps), eps_high=_get(config, "clip_ratio_high", eps), dual_c=_get(config, "clip_ratio_c", 3.0)
    )
    try:  # ctpo.py's check, with verl's names in the message
        ctpo.ratio_clip_bounds(knobs["eps_low"], knobs["eps_high"], knobs["dual_c"])
    except ValueError as e:
        raise ValueError(f"clip_ratio_low / clip_ratio_high / clip_ratio_c (ctpo's eps_low / eps_high / dual_c): {e}") from None
    return knobs


def batch_counts(config, loss_agg_mode):
    """(dp_size, num_tokens, num_seqs, loss_scale_factor) from config.global_batch_info, verl's names:
    dp_size, batch_num_tokens (valid tokens in the global batch), global_batch_size (sequences in it),
    loss_scale_factor. None where verl would use the local micro-batch count (only allowed with dp_size 1)."""
    info = dict(_get(config, "global_batch_info", None) or {})
    dp_size = info.get("dp_size")
    dp_size = 1 if dp_size is None else dp_size
    if isinstance(dp_size, bool) or not isinstance(dp_size, int) or dp_size < 1:
        raise ValueError(f"global_batch_info.dp_size: expected an integer >= 1, got {dp_size!r}")
    num_tokens, num_seqs = info.get("batch_num_tokens"), info.get("global_batch_size")
    # verl's agg_loss refuses a local count on several ranks (each rank would divide by its own count)
    if dp_size > 1 and loss_agg_mode == "token-mean" and num_tokens is None:
        raise ValueError("global_batch_info.batch_num_tokens: required when dp_size > 1 (verl's agg_loss rule)")
    if dp_size > 1 and loss_agg_mode.startswith("seq-mean") and num_seqs is None:
        raise ValueError("global_batch_info.global_batch_size: required when dp_size > 1 (verl's agg_loss rule)")
    return dp_size, num_tokens, num_seqs, info.get("loss_scale_factor")


# -----------------------------------------------------------------------------
# Metrics in verl's style: a flat dict of plain floats, averaged by verl over micro-batches


def verl_metrics(metrics, log_prob, old_log_prob, mask):
    """verl's keys (actor/pg_clipfrac, actor/ppo_kl, actor/pg_clipfrac_lower, as its `vanilla` loss defines
    them) plus ctpo's clip fractions and weight statistics under actor/ctpo/. Floats, local to the micro-batch."""
    with torch.no_grad():
        mask = mask.bool()
        delta = (log_prob.detach().float() - old_log_prob.float()).clamp(-20.0, 20.0)
        ppo_kl = torch.where(mask, -delta, 0.0).sum() / mask.sum().clamp(min=1)  # verl's masked mean of -delta
    out = {
        # vanilla's pg_clipfrac counts the window (A > 0 above it, A < 0 below it); pg_clipfrac_lower the dual clip
        "actor/pg_clipfrac": float(metrics["clip_frac_high"] + metrics["clip_frac_low"]),
        "actor/ppo_kl": float(ppo_kl),
        "actor/pg_clipfrac_lower": float(metrics["clip_frac_dual"]),
    }
    for k in ("clip_frac", "clip_frac_high", "clip_frac_low", "clip_frac_dual", "ratio_mean", "ratio_min", "ratio_max"):
        out[f"actor/ctpo/{k}"] = float(metrics[k])
    for q in (10, 50, 90):
        out[f"actor/ctpo/ratio_q{q}"] = float(metrics[f"ratio_q{q}"])
    return out


# -----------------------------------------------------------------------------
# The loss and its registration


def policy_loss(
    old_log_prob,
    log_prob,
    advantages,
    response_mask,
    loss_agg_mode="token-mean",
    config=None,
    rollout_is_weights=None,
    *,
    method="ctpo",
    backend=None,
    **knobs,
):
    """ctpo.policy_loss behind verl's policy-loss signature. Returns (scalar loss, dict of floats).

    old_log_prob, log_prob: (B, T) log-probs of the sampling and the current policy (log_prob has the gradient)
    advantages:    (B, T) (verl's per-token advantages; (B,) is accepted too)
    response_mask: (B, T) bool or 0/1
    loss_agg_mode: token-mean | token-sum | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm
    config:        verl's ActorConfig (or a DictConfig / dict): clip_ratio* for the ratio-window presets, and
                   global_batch_info (dp_size, batch_num_tokens, global_batch_size, loss_scale_factor)
    rollout_is_weights: optional (B, T) >= 0 weights on each token's loss (verl's rollout correction)
    method, knobs: as in ctpo.policy_loss; knobs override the preset and verl's clip ratios.
    backend:       as in ctpo.policy_loss; None: `default_backend` (the fused op where it applies and builds).
    Equal to verl's agg_loss convention: (sum of token losses / global count) * dp_size, so that the data-parallel
    gradient average gives the global-batch loss. Raises ValueError / TypeError on bad input (from ctpo.py).
    """
    dp_size, num_tokens, num_seqs, loss_scale_factor = batch_counts(config, loss_agg_mode)
    backend = default_backend(method, **knobs) if backend is None else backend
    loss, metrics = ctpo.policy_loss(
        log_prob,
        old_log_prob,
        advantages,
        response_mask,
        method=method,
        agg=loss_agg_mode,
        backend=backend,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        rollout_is_weights=rollout_is_weights,
        loss_scale_factor=loss_scale_factor,
        **{**ratio_window_knobs(method, config, **knobs), **knobs},
    )
    # divide by the global count first, then * dp_size: verl agg_loss order of operations
    if dp_size != 1:
        loss = loss * dp_size
    return loss, verl_metrics(metrics, log_prob, old_log_prob, response_mask)


def default_backend(method, **knobs):
    """auto (the fused op if it builds, else Python with one warning) where the op has a kernel: the cumulative
    ratio with the adaptive window; python for the rest, where auto would only warn that it falls back."""
    cfg = ctpo.method_config(method, **knobs)
    return "auto" if (cfg["ratio"], cfg["clip"], cfg["stop_gradient"]) == ("cumulative", "adaptive", True) else "python"


def register(name, method, backend=None, **knobs):
    """Register `name` as a verl policy loss: ctpo.policy_loss with `method` and these knobs. Returns the function.

    The knobs are checked now (unknown or invalid: TypeError / ValueError), not at the first training step.
    A name verl already uses for another loss is refused (ValueError), a name this module registered is replaced.
    """
    existing = core_algos.POLICY_LOSS_REGISTRY.get(name)
    if existing is not None and not getattr(existing, "_ctpo_verl", False):
        raise ValueError(f"name: {name!r} is verl's own policy loss; choose another name")
    _dry_run(method, backend, knobs)

    def fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None, rollout_is_weights=None):
        return policy_loss(
            old_log_prob,
            log_prob,
            advantages,
            response_mask,
            loss_agg_mode,
            config,
            rollout_is_weights,
            method=method,
            backend=backend,
            **knobs,
        )

    fn._ctpo_verl = True  # marks our registrations: re-registering one is allowed, replacing verl's is not
    fn.__name__ = fn.__qualname__ = "ctpo_policy_loss_" + name.replace("-", "_")
    fn.__doc__ = f"verl policy loss {name!r}: ctpo.policy_loss(method={method!r}, knobs={knobs}); see ctpo_verl.policy_loss."
    core_algos.register_policy_loss(name)(fn)
    REGISTERED[name] = (method, dict(knobs))
    return fn


def _dry_run(method, backend, knobs):
    # a 1x1 call validates the method, knob names and values (ctpo.py raises naming the knob)
    x = torch.zeros(1, 1)
    ctpo.policy_loss(x, x, x[:, 0], torch.ones(1, 1, dtype=torch.bool), method=method, backend="python", **knobs)
    if backend is not None and backend not in ctpo.BACKENDS:
        raise ValueError(f"backend: unknown {backend!r}; expected one of {list(ctpo.BACKENDS)}")


for _name, _method in PRESETS.items():
    register(_name, _method)
