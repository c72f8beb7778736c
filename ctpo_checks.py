"""Input checks for ctpo.policy_loss: what a reader of ctpo.py may skip.

check_inputs: types, shapes, devices and scalar arguments, once, for both backends. check_values: the Python
backend's value checks (NaN / inf, negative rollout weights, log-probs above 0), which the fused kernel makes in its
own pass. ValueError / TypeError name the argument and what was expected.
"""

import math

import torch

import ctpo_ext  # LOGP_MARGIN and check_logp_max: the log-prob check's margin and message, shared with the kernel's

AGGS = ("token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")  # ctpo.aggregate
BACKENDS = ("python", "ext", "auto")  # ctpo.policy_loss


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_FLOAT_NAMES = "float16/bfloat16/float32/float64"


def check_inputs(logp, old_logp, advantages, mask, agg, backend, counts, ref_logp, beta, rollout_is_weights):
    """Validate types, shapes, devices and scalar arguments once, for both backends (values: `check_values` or the
    kernel's pass). counts: (num_tokens, num_seqs, loss_scale_factor). Returns mask (bool), old_logp, the advantages
    ((B,) or (B, T)), ref_logp (None when beta = 0), rollout_is_weights, all without gradient: only logp gets one."""
    if backend not in BACKENDS or agg not in AGGS:
        name, x, known = ("backend", backend, BACKENDS) if backend not in BACKENDS else ("agg", agg, AGGS)
        raise ValueError(f"{name}: unknown {x!r}; expected one of {list(known)}")
    if not isinstance(logp, torch.Tensor):
        raise TypeError(f"logp: expected a torch.Tensor, got {type(logp).__name__}")
    if logp.dtype not in FLOAT_DTYPES:
        raise TypeError(f"logp: expected a floating dtype ({_FLOAT_NAMES}), got {logp.dtype}")
    if logp.dim() != 2:
        raise ValueError(f"logp: expected shape (B, T), got {tuple(logp.shape)}")
    device, shape = logp.device, logp.shape
    _check_tensor("old_logp", old_logp, True, True, device, shape)  # (name, x, a float dtype?, shape (B, T)?, ...)
    _check_tensor("advantages", advantages, True, False, device, shape)
    _check_tensor("mask", mask, False, True, device, shape)
    adv_shape = advantages.shape
    if adv_shape != shape[:1] and adv_shape != shape:
        if adv_shape != (shape[0], 1):
            raise ValueError(f"advantages: expected shape ({shape[0]},), ({shape[0]}, 1) or {tuple(shape)}, got {tuple(adv_shape)}")
        advantages = advantages[:, 0]  # TRL's advantages.unsqueeze(1), verl's broadcasting: one per row
    if mask.dtype != torch.bool:
        if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"mask: expected bool or 0/1 values, got dtype {mask.dtype} with other values")
        mask = mask != 0
    if beta != 0 or ref_logp is not None or rollout_is_weights is not None or counts != (None, None, None):
        ref_logp = _check_optional(logp, mask, counts, ref_logp, beta, rollout_is_weights)  # the arguments most calls leave out
    if old_logp.requires_grad or advantages.requires_grad or (rollout_is_weights is not None and rollout_is_weights.requires_grad):
        old_logp, advantages = old_logp.detach(), advantages.detach()
        rollout_is_weights = rollout_is_weights.detach() if rollout_is_weights is not None else None
    return mask, old_logp, advantages, ref_logp, rollout_is_weights


def _check_tensor(name, x, is_float, same_shape, device, shape):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if is_float and x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a floating dtype ({_FLOAT_NAMES}), got {x.dtype}")
    if x.device != device:
        raise ValueError(f"{name}: expected device {device} like logp, got {x.device}")
    if same_shape and x.shape != shape:
        raise ValueError(f"{name}: expected shape {tuple(shape)} like logp, got {tuple(x.shape)}")


def _check_optional(logp, mask, counts, ref_logp, beta, rollout_is_weights):
    """beta and ref_logp (the KL term), the rollout weights and the global counts; returns ref_logp, detached, or None
    when beta = 0 (without the KL term it is not used)."""
    if not (isinstance(beta, (int, float)) and 0 <= beta < math.inf):
        raise ValueError(f"beta: expected a finite number >= 0, got {beta!r}")
    if beta != 0 and ref_logp is None:
        raise ValueError("ref_logp: required when beta != 0")
    ref_logp = ref_logp if beta != 0 else None
    device, shape = logp.device, logp.shape
    for name, x in (("ref_logp", ref_logp), ("rollout_is_weights", rollout_is_weights)):
        if x is not None:
            _check_tensor(name, x, True, True, device, shape)
    for name, x in zip(("num_tokens", "num_seqs", "loss_scale_factor"), counts):
        if isinstance(x, torch.Tensor):  # a global count (a sum over ranks): on a GPU or in a graph checked without a host sync
            if x.numel() != 1 or x.device not in (device, torch.device("cpu")):
                raise ValueError(f"{name}: expected a number or a one-element tensor (on {device} or cpu), got {tuple(x.shape)} {x.device}")
            ok = (torch.isfinite(x) & (x >= 0)).reshape(())
            if torch.compiler.is_compiling() or x.device.type != "cpu":
                torch._assert_async(ok, f"{name}: expected a finite count >= 0")
            elif not bool(ok):
                raise ValueError(f"{name}: expected a finite count >= 0, got {x.item()!r}")
        elif x is not None and not (isinstance(x, (int, float)) and 0 <= x < math.inf):
            raise ValueError(f"{name}: expected a finite count >= 0 (or None), got {x!r}")
    if ref_logp is not None:  # the KL term is not in the fused op: its input's values are checked here on both backends
        ref_logp = ref_logp.detach()
        if not bool(torch.isfinite(torch.where(mask, ref_logp, 0.0)).all()):
            raise ValueError("ref_logp: expected finite values at every mask=1 position")
        if logp.numel() > 0:
            ctpo_ext.check_logp_max("ref_logp", torch.where(mask, ref_logp, -math.inf).amax().item())
    return ref_logp


def check_values(logp, old_logp, adv, mask, rollout_is_weights=None):
    """The Python backend's value checks (the kernel makes the same in its pass): ValueError naming a negative or
    non-finite rollout weight, then the first of logp, old_logp, advantages with a NaN or inf at a mask=1 position,
    then the first of logp, old_logp above ctpo_ext.LOGP_MARGIN there (probabilities or logits?)."""
    if rollout_is_weights is not None and not bool((~mask | (torch.isfinite(rollout_is_weights) & (rollout_is_weights >= 0))).all()):
        raise ValueError("rollout_is_weights: expected finite non-negative values at every mask=1 position")
    adv = adv[:, None].expand_as(logp) if adv.dim() == 1 else adv
    # one pass for the common case (a NaN or inf in any input makes the sum non-finite), then find which
    if not bool(torch.isfinite(torch.where(mask, logp.detach().float() + old_logp.float() + adv.float(), 0.0)).all()):
        for name, x in (("logp", logp), ("old_logp", old_logp), ("advantages", adv)):
            if not bool(torch.isfinite(torch.where(mask, x.detach(), 0.0)).all()):
                raise ValueError(f"{name}: NaN or inf at a mask=1 position")
    largest = torch.where(mask, torch.maximum(logp.detach().float(), old_logp.float()), -math.inf)
    if logp.numel() > 0 and bool(largest.amax() > ctpo_ext.LOGP_MARGIN):
        for name, x in (("logp", logp), ("old_logp", old_logp)):
            ctpo_ext.check_logp_max(name, torch.where(mask, x.detach(), -math.inf).amax().item())
