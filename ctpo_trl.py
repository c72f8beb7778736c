"""CTPO inside TRL: a GRPOTrainer whose policy loss is ctpo.policy_loss.

    from ctpo_trl import CTPOConfig, CTPOTrainer
    args = CTPOConfig(output_dir="out", ctpo_method="ctpo", num_iterations=2, loss_type="dapo", ...)
    trainer = CTPOTrainer(model=..., reward_funcs=..., args=args, train_dataset=...)
    trainer.train()

Everything but the loss is TRL's GRPOTrainer (trl 1.16): generation, rewards, group advantages, gradient
accumulation, several processes, vLLM, logging. The loss is ctpo.policy_loss on TRL's tensors:

    per_token_logps (B, T) (recomputed, with gradient)   -> logp
    inputs["old_per_token_logps"] (B, T)                 -> old_logp   (see the warning below when absent)
    inputs["advantages"] (B,) or (B, T)                  -> advantages
    completion_mask (* tool_mask)                        -> mask
    inputs["importance_sampling_ratio"] (vLLM's IS)      -> rollout_is_weights   ((B, 1) sequence modes broadcast)

TRL's loss_type chooses the normalisation, kept exactly, across gradient accumulation and processes:
    dapo     token-mean, num_tokens = TRL's divisor (global tokens of the generation batch, per process and
             accumulation window)
    grpo     seq-mean-token-mean, num_seqs = B * gradient accumulation steps
    bnpo     token-mean, num_tokens = this micro-batch's tokens * gradient accumulation steps
    dr_grpo  seq-mean-token-sum-norm, num_seqs = B * gradient accumulation steps, loss_scale_factor =
             max_completion_length
The other loss types (cispo, sapo, luspo, vespo) are other surrogates, not normalisations: refused.

The presets with PPO's ratio window (grpo, gspo, sequence) take TRL's epsilon / epsilon_high as eps_low /
eps_high, and TRL's `delta` (INTELLECT-2's two-sided clip, a cap on the ratio of A < 0 tokens) as dual_c, unless
ctpo_kwargs sets them. Note the presets keep ctpo.py's dual clip dual_c = 3 where TRL has none: with
ctpo_method="grpo", ctpo_kwargs={"dual_c": float("inf")} the loss is TRL's own dapo / grpo / bnpo / dr_grpo loss.

Refused loudly (ValueError when the config is made), because this trainer does not carry them over: beta != 0
(the KL term), top_entropy_quantile < 1 (entropy masking), entropy_coef / use_adaptive_entropy (entropy bonus),
off_policy_mask_threshold, a MoE router aux loss, and importance_sampling_level="sequence" with any method but
gspo (the method chooses the ratio).

Logged (through TRL's metrics, averaged over the logging window like TRL's): TRL's own loss keys (policy_loss,
entropy, clip_ratio/low_mean, clip_ratio/high_mean, clip_ratio/region_mean, clip_ratio/low_min,
clip_ratio/high_max; "low" / "high" are the method's window, the adaptive one for the ctpo presets) and ctpo's
(ctpo/clip_frac, ctpo/clip_frac_high, ctpo/clip_frac_low, ctpo/clip_frac_dual, ctpo/ratio_mean, ctpo/ratio_min,
ctpo/ratio_max over all processes; ctpo/ratio_q10, _q50, _q90 as the mean of each process's quantile).

TRL computes old log-probs only when gradient_accumulation_steps % (steps_per_generation * num_iterations) != 0
(e.g. num_iterations=2) or with vLLM's importance-sampling correction. Otherwise the batch is on-policy: every
ratio is 1 and no clipping ever acts, so CTPO reduces to the plain policy gradient; the trainer warns once.
"""

import json
import math
import warnings
from dataclasses import dataclass, field

import torch
from trl import GRPOConfig, GRPOTrainer

import ctpo

LOSS_TYPES = ("dapo", "grpo", "bnpo", "dr_grpo")  # TRL's normalisations that this trainer carries over
MULTIMODAL_KEYS = (  # passed through to TRL's log-prob computation untouched, as its own _compute_loss does
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


# -----------------------------------------------------------------------------
# Config: TRL's GRPOConfig plus the ctpo method, its knobs, the backend


@dataclass
class CTPOConfig(GRPOConfig):
    """trl.GRPOConfig plus ctpo_method (a ctpo.METHODS preset), ctpo_kwargs (knob overrides, a dict or its JSON),
    ctpo_backend (python | ext | auto). Checked when made: unknown methods or knobs, and TRL options that
    CTPOTrainer does not carry over, raise ValueError / TypeError naming them."""

    ctpo_method: str = field(default="ctpo", metadata={"help": f"ctpo.py preset: one of {sorted(ctpo.METHODS)}."})
    ctpo_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "ctpo.policy_loss knob overrides, e.g. {'clip_high': 0.1} (a JSON string on the command line)."},
    )
    ctpo_backend: str = field(
        default="auto", metadata={"help": "python | ext (the fused op) | auto (ext where it applies and builds, else python)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.ctpo_kwargs, str):
            self.ctpo_kwargs = json.loads(self.ctpo_kwargs)
        self.ctpo_kwargs = dict(self.ctpo_kwargs or {})
        ctpo_knobs(self)  # raises on anything not carried over


def ctpo_knobs(args):
    """The knobs passed to ctpo.policy_loss for this config: TRL's clip settings mapped onto the preset, then
    ctpo_kwargs. Raises ValueError / TypeError for what CTPOTrainer does not carry over or cannot accept."""
    if args.ctpo_method not in ctpo.METHODS:
        raise ValueError(f"ctpo_method: unknown {args.ctpo_method!r}; expected one of {sorted(ctpo.METHODS)}")
    if args.ctpo_backend not in ctpo.BACKENDS:
        raise ValueError(f"ctpo_backend: unknown {args.ctpo_backend!r}; expected one of {list(ctpo.BACKENDS)}")
    if not isinstance(args.ctpo_kwargs, dict):
        raise TypeError(f"ctpo_kwargs: expected a dict of knob overrides, got {type(args.ctpo_kwargs).__name__}")
    user = dict(args.ctpo_kwargs)
    cfg = ctpo.method_config(args.ctpo_method, **user)  # unknown knob names: TypeError naming them

    # TRL options whose effect this trainer would otherwise drop silently
    if args.loss_type not in LOSS_TYPES:
        raise ValueError(
            f"loss_type: CTPOTrainer carries over TRL's normalisations {list(LOSS_TYPES)}; {args.loss_type!r} is a "
            "different surrogate loss, which ctpo_method replaces"
        )
    refused = {
        "beta": (args.beta != 0.0, "the KL penalty to a reference model is not carried over; set beta=0.0"),
        "top_entropy_quantile": (args.top_entropy_quantile < 1.0, "entropy masking is not carried over; set 1.0"),
        "entropy_coef": (args.entropy_coef != 0.0, "the entropy bonus is not carried over; set 0.0"),
        "use_adaptive_entropy": (args.use_adaptive_entropy, "the entropy bonus is not carried over; set False"),
        "off_policy_mask_threshold": (args.off_policy_mask_threshold is not None, "off-policy sequence masking is not carried over"),
    }
    for name, (bad, why) in refused.items():
        if bad:
            raise ValueError(f"{name}: {why} (CTPOTrainer's loss is ctpo.policy_loss)")
    if args.importance_sampling_level != "token" and cfg["ratio"] != "gspo":
        raise ValueError(
            f"importance_sampling_level: {args.importance_sampling_level!r} is GSPO's ratio; with CTPOTrainer the ratio is "
            f"chosen by ctpo_method ({args.ctpo_method!r} uses {cfg['ratio']!r}): leave it at 'token' or use ctpo_method='gspo'"
        )

    # TRL's clip settings feed the presets with a ratio window, unless ctpo_kwargs set them
    knobs = {}
    if cfg["clip"] == "ratio":
        knobs["eps_low"] = args.epsilon
        knobs["eps_high"] = args.epsilon if args.epsilon_high is None else args.epsilon_high
        if args.delta is not None:
            if "dual_c" in user:
                raise ValueError("delta: TRL's two-sided clip is ctpo's dual_c; set one of delta and ctpo_kwargs['dual_c']")
            eps_high = user.get("eps_high", knobs["eps_high"])
            if not args.delta > 1 + eps_high:
                raise ValueError(f"delta: expected > 1 + epsilon_high = {1 + eps_high} (a cap above the clip window), got {args.delta}")
            knobs["dual_c"] = args.delta
    elif args.delta is not None:
        raise ValueError(
            f"delta: TRL's two-sided clip has no meaning for {args.ctpo_method!r}, whose adaptive window caps A < 0 tokens at "
            "clip_c * t^power: set ctpo_kwargs['clip_c'] instead"
        )
    knobs.update(user)
    # a 1x1 dry run checks the knob values now (ctpo.py raises naming the knob), not at the first training step
    x = torch.zeros(1, 1)
    ctpo.policy_loss(x, x, x[:, 0], torch.ones(1, 1, dtype=torch.bool), method=args.ctpo_method, backend="python", **knobs)
    return knobs


# -----------------------------------------------------------------------------
# Trainer: TRL's GRPOTrainer with _compute_loss replaced


class CTPOTrainer(GRPOTrainer):
    """trl.GRPOTrainer whose loss is ctpo.policy_loss (see the module docstring for what is carried over).

    Same arguments as GRPOTrainer; `args` must be a CTPOConfig (TypeError otherwise).
    """

    def __init__(self, model, reward_funcs=None, args=None, *rest, **kwargs):
        if not isinstance(args, CTPOConfig):
            raise TypeError(f"args: expected a CTPOConfig (a trl.GRPOConfig with the ctpo fields), got {type(args).__name__}")
        super().__init__(model, reward_funcs, args, *rest, **kwargs)
        if self.aux_loss_enabled:
            raise ValueError("router_aux_loss_coef: the MoE load-balancing loss is not carried over by CTPOTrainer; set it to 0.0")
        self.ctpo_knobs = ctpo_knobs(args)
        self.ctpo_cfg = cfg = ctpo.method_config(args.ctpo_method, **self.ctpo_knobs)
        # auto: the fused op where it has a kernel (cumulative ratio, adaptive window); python elsewhere, silently
        fused = (cfg["ratio"], cfg["clip"], cfg["stop_gradient"]) == ("cumulative", "adaptive", True)
        self.ctpo_backend = "python" if args.ctpo_backend == "auto" and not fused else args.ctpo_backend
        self._warned_on_policy = False

    def _normalisation(self, inputs, mask, mode):
        """(agg, counts) reproducing TRL's loss_type normalisation (grpo_trainer.py, _compute_loss)."""
        gas = self.current_gradient_accumulation_steps if mode == "train" else 1  # no accumulation in eval
        B = mask.shape[0]
        if self.loss_type == "dapo":
            # TRL: num_items_in_batch spans the generation batch of all processes; rescaled to one window here
            normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if mode == "train":
                normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
            # ctpo floors a divisor at 1: differs from TRL only below one token per process and window
            return "token-mean", dict(num_tokens=normalizer)
        if self.loss_type == "grpo":
            return "seq-mean-token-mean", dict(num_seqs=B * gas)
        if self.loss_type == "bnpo":
            return "token-mean", dict(num_tokens=mask.sum().clamp(min=1) * gas)
        if self.loss_type == "dr_grpo":
            return "seq-mean-token-sum-norm", dict(num_seqs=B * gas, loss_scale_factor=self.max_completion_length)
        raise ValueError(f"loss_type: {self.loss_type!r} is not carried over")  # unreachable: ctpo_knobs refused it

    def _compute_loss(self, model, inputs):
        # the per-token log-probs exactly as TRL's own _compute_loss gets them
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]  # (B, T)
        per_token_logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            completion_ids.size(1),
            compute_entropy=True,
            **{k: inputs.get(k) for k in MULTIMODAL_KEYS},
        )  # (B, T), (B, T)

        old = inputs.get("old_per_token_logps")
        if old is None:
            if not self._warned_on_policy:
                warnings.warn(
                    "CTPOTrainer: TRL computed no old log-probs for this batch (it does only when gradient_accumulation_steps % "
                    "(steps_per_generation * num_iterations) != 0, or with vLLM importance sampling): every ratio is 1 and no "
                    "clipping acts. Set num_iterations > 1 for CTPO's cumulative ratio to matter.",
                    stacklevel=2,
                )
                self._warned_on_policy = True
            old = per_token_logps.detach()
        is_ratio = inputs.get("importance_sampling_ratio")  # vLLM vs trainer; (B, T), or (B, 1) in sequence modes
        if is_ratio is not None:
            is_ratio = is_ratio.expand_as(per_token_logps)

        mode = "train" if self.model.training else "eval"
        agg, counts = self._normalisation(inputs, mask, mode)
        loss, m = ctpo.policy_loss(
            per_token_logps,
            old,
            inputs["advantages"],
            mask,
            method=self.args.ctpo_method,
            agg=agg,
            backend=self.ctpo_backend,
            rollout_is_weights=is_ratio,
            **counts,
            **self.ctpo_knobs,
        )
        # TRL's policy_loss metric: the micro-batch loss before the accumulation scaling (dapo's is never scaled)
        gas = self.current_gradient_accumulation_steps if mode == "train" and self.loss_type != "dapo" else 1
        self._log_ctpo_metrics(mode, loss.detach() * gas, m, entropies, mask.bool(), inputs["advantages"])
        return loss

    # -------------------------------------------------------------------------
    # metrics: TRL's keys and ctpo's, reduced over processes

    @torch.no_grad()
    def _log_ctpo_metrics(self, mode, policy_loss, m, entropies, mask, advantages):
        acc, log = self.accelerator, self._metrics[mode]
        adv = advantages if advantages.dim() == 2 else advantages[:, None].expand_as(mask)
        lower, upper, dual = ctpo.clip_bounds(ctpo.response_position(mask), self.ctpo_cfg, m["log_w"].dtype)
        high, low, _ = (f & mask for f in ctpo.clip_flags(m["log_w"], adv.to(m["log_w"].dtype), lower, upper, dual))

        def global_mean(x):  # masked mean over every process's tokens
            totals = acc.reduce(torch.stack([torch.where(mask, x.float(), 0.0).sum(), mask.sum().float()]), reduction="sum")
            return (totals[0] / totals[1].clamp(min=1.0)).item()

        def seq_means(x):  # per-sequence masked means, gathered; empty rows are NaN and skipped, as in TRL
            return acc.gather(torch.where(mask, x.float(), 0.0).sum(-1) / mask.sum(-1))

        log["policy_loss"].append(acc.gather(policy_loss).nanmean().item())
        log["entropy"].append(global_mean(entropies))
        log["clip_ratio/low_mean"].append(global_mean(low))
        log["clip_ratio/high_mean"].append(global_mean(high))
        log["clip_ratio/region_mean"].append(global_mean(low | high))
        log["clip_ratio/low_min"].append(_nan_reduce(seq_means(low), torch.amin))
        log["clip_ratio/high_max"].append(_nan_reduce(seq_means(high), torch.amax))

        counts = torch.stack([m["n_tokens"], m["n_clip_high"], m["n_clip_low"], m["n_clip_dual"]]).float()
        counts = torch.cat([counts, (m["ratio_mean"] * m["n_tokens"]).float()[None], (m["clipped"] & mask).sum().float()[None]])
        n, hi, lo, du, w_sum, any_clip = acc.reduce(counts, reduction="sum").tolist()
        nf = max(n, 1.0)  # no tokens anywhere: fractions 0, mean ratio 1 (on-policy), never NaN
        log["ctpo/clip_frac"].append(any_clip / nf)
        log["ctpo/clip_frac_high"].append(hi / nf)
        log["ctpo/clip_frac_low"].append(lo / nf)
        log["ctpo/clip_frac_dual"].append(du / nf)
        log["ctpo/ratio_mean"].append(w_sum / n if n else 1.0)
        log["ctpo/ratio_min"].append(acc.gather(m["ratio_min"].float()[None]).min().item())
        log["ctpo/ratio_max"].append(acc.gather(m["ratio_max"].float()[None]).max().item())
        for q in (10, 50, 90):
            log[f"ctpo/ratio_q{q}"].append(acc.gather(m[f"ratio_q{q}"].float()[None]).mean().item())


def _nan_reduce(x, op):
    # TRL's nanmin / nanmax: NaN when every entry is NaN
    x = x[~torch.isnan(x)]
    return op(x).item() if x.numel() else math.nan
