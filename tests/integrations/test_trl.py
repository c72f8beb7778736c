"""ctpo_trl against TRL 1.16 itself, offline on CPU: a tiny random Llama, a character tokenizer, a Python reward.

Needs trl (requirements-trl.txt, its own venv: TRL needs transformers >= 5.11, verl less); skipped without it.
No downloads: the model is built from a config, the tokenizer from a vocabulary, the data set in memory.
"""

import math
import warnings

import pytest
import torch

pytest.importorskip("trl", reason="trl is not installed (requirements-trl.txt, in its own venv)")

from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

import ctpo_trl  # noqa: E402
from ctpo_trl import CTPOConfig, CTPOTrainer  # noqa: E402

INF = float("inf")
CHARS = "abcdefgh "
TRL_LOSS_KEYS = (
    "entropy",
    "clip_ratio/low_mean",
    "clip_ratio/high_mean",
    "clip_ratio/region_mean",
    "clip_ratio/low_min",
    "clip_ratio/high_max",
)


def tokenizer():
    # one token per character; pad 0, eos 1, bos 2
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, **{c: i + 3 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=3 + len(CHARS),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    return LlamaForCausalLM(cfg)


def reward_a(completions, **kwargs):
    return [float(c.count("a")) - 0.1 * len(c) for c in completions]


DATA = Dataset.from_dict({"prompt": ["ab", "cd", "ef", "gh", "ba", "dc", "fe", "hg"] * 2})


def config(cls, tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        max_steps=3,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        learning_rate=0.1,
        optim="sgd",  # no Adam normalisation: a float difference in the gradient stays a float difference
        logging_steps=1,
        save_strategy="no",
        seed=0,
        ctpo_backend="python",  # CTPOConfig only (removed for GRPOConfig below); no JIT build of the fused op in a test
        disable_tqdm=True,
    )
    if cls is GRPOConfig:
        base.pop("ctpo_backend")
    return cls(**{**base, **kw})


def train(trainer_cls, args):
    trainer = trainer_cls(model=tiny_llama(), reward_funcs=reward_a, args=args, train_dataset=DATA, processing_class=tokenizer())
    trainer.train()
    return trainer


def params(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.named_parameters()}


def initial_params():
    return {k: v.detach().clone() for k, v in tiny_llama().named_parameters()}


# -----------------------------------------------------------------------------
# the acceptance: CTPOTrainer(grpo, no dual clip) ends where TRL's own GRPOTrainer ends


@pytest.mark.parametrize("num_iterations", [1, 2])
def test_grpo_preset_without_dual_clip_equals_trl_dapo(tmp_path, num_iterations):
    accumulation = dict(gradient_accumulation_steps=2) if num_iterations == 2 else {}  # 2 micro-batches per step
    ours_args = config(
        CTPOConfig,
        tmp_path / "ctpo",
        loss_type="dapo",
        num_iterations=num_iterations,
        ctpo_method="grpo",
        ctpo_kwargs={"dual_c": INF},
        **accumulation,
    )
    trl = train(GRPOTrainer, config(GRPOConfig, tmp_path / "trl", loss_type="dapo", num_iterations=num_iterations, **accumulation))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = train(CTPOTrainer, ours_args)
    on_policy_warnings = [w for w in caught if "no old log-probs" in str(w.message)]
    assert len(on_policy_warnings) == (1 if num_iterations == 1 else 0)  # once, and only when ratios are all 1
    init, p_trl, p_ours = initial_params(), params(trl), params(ours)
    assert max((p_trl[k] - init[k]).abs().max().item() for k in init) > 1e-3  # the runs did move the parameters
    for k in p_trl:
        torch.testing.assert_close(p_ours[k], p_trl[k], msg=k)
    # the logged losses and TRL's own loss metrics agree too
    for h_trl, h_ours in zip(trl.state.log_history[:3], ours.state.log_history[:3], strict=True):
        for key in ("loss",) + TRL_LOSS_KEYS:
            assert h_ours[key] == pytest.approx(h_trl[key], rel=1e-5, abs=1e-7), key
    if num_iterations == 2:  # second pass over a batch: off-policy, and TRL's window did clip something
        assert any(h["clip_ratio/region_mean"] > 0 for h in trl.state.log_history[:3])


def test_ctpo_run_with_two_iterations_learns_logs_and_sees_ratios(tmp_path):
    args = config(CTPOConfig, tmp_path, loss_type="dapo", num_iterations=2, ctpo_method="ctpo")
    trainer = train(CTPOTrainer, args)
    init, after = initial_params(), params(trainer)
    assert max((after[k] - init[k]).abs().max().item() for k in init) > 1e-3
    steps = [h for h in trainer.state.log_history if "loss" in h]
    assert len(steps) == 3
    keys = ("loss", "policy_loss", "ctpo/clip_frac", "ctpo/clip_frac_high", "ctpo/clip_frac_low", "ctpo/clip_frac_dual")
    for h in steps:
        for key in keys + TRL_LOSS_KEYS + ("ctpo/ratio_min", "ctpo/ratio_max", "ctpo/ratio_q50"):
            assert key in h and math.isfinite(h[key]), (key, h)
    # the second pass over each batch is off-policy: CTPO's cumulative ratio moves away from 1
    assert any(h["ctpo/ratio_max"] > 1 + 1e-4 or h["ctpo/ratio_min"] < 1 - 1e-4 for h in steps)
    assert any(h["ctpo/clip_frac"] > 0 for h in steps)


# -----------------------------------------------------------------------------
# one loss call against TRL's own, on the same inputs: every carried-over loss_type, accumulation, IS weights


def loss_inputs(seed=0, B=4, P=3, T=6, is_shape=None):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([T, T - 2, 1, 0])[:B]
    completion_mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    inputs = dict(
        prompt_ids=torch.randint(3, 3 + len(CHARS), (B, P), generator=g),
        prompt_mask=torch.ones(B, P, dtype=torch.long),
        completion_ids=torch.randint(3, 3 + len(CHARS), (B, T), generator=g) * completion_mask,
        completion_mask=completion_mask,
        advantages=torch.tensor([1.0, -1.0, 0.5, -0.5])[:B],
        num_items_in_batch=completion_mask.sum() * 3,  # a generation batch of three such micro-batches
    )
    if is_shape is not None:
        inputs["importance_sampling_ratio"] = torch.rand(B, *is_shape[1:], generator=g) * 1.5
    return inputs


def with_old_logps(trainer, inputs, spread, seed=1):
    # old log-probs a little off the current ones: ratios != 1 in both clip directions
    with torch.no_grad():
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
        am = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
        logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, am, inputs["completion_ids"].size(1))
    noise = torch.randn(logps.shape, generator=torch.Generator().manual_seed(seed)) * spread
    return {**inputs, "old_per_token_logps": logps + noise}


@pytest.fixture(scope="module")
def trainers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loss")
    made = {}
    for loss_type in ctpo_trl.LOSS_TYPES:
        for delta in (None, 2.0):
            kw = dict(loss_type=loss_type, epsilon=0.2, epsilon_high=0.28, delta=delta, max_steps=1)
            trl = GRPOTrainer(tiny_llama(), reward_a, config(GRPOConfig, tmp / "t", **kw), train_dataset=DATA, processing_class=tokenizer())
            ours_args = config(CTPOConfig, tmp / "o", ctpo_method="grpo", ctpo_kwargs={} if delta else {"dual_c": INF}, **kw)
            ours = CTPOTrainer(tiny_llama(), reward_a, ours_args, train_dataset=DATA, processing_class=tokenizer())
            made[loss_type, delta] = (trl, ours)
    return made


@pytest.mark.parametrize("loss_type", ctpo_trl.LOSS_TYPES)
@pytest.mark.parametrize("delta", [None, 2.0])
@pytest.mark.parametrize("is_shape", [None, (4, 6), (4, 1)])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_loss_and_gradient_equal_trl_on_the_same_inputs(trainers, loss_type, delta, is_shape, mode):
    trl, ours = trainers[loss_type, delta]
    inputs = with_old_logps(trl, loss_inputs(is_shape=is_shape), spread=0.8)
    inputs["tool_mask"] = torch.ones_like(inputs["completion_mask"])
    inputs["tool_mask"][0, 1] = 0  # a tool-output token: not a policy token
    results = []
    for t in (trl, ours):
        t.model.train(mode == "train")
        t.current_gradient_accumulation_steps = 2  # different counts, so that a missing factor shows
        t.args.steps_per_generation = 4
        # TRL applies the vLLM IS ratio only with use_vllm; ours whenever the batch carries one
        t.use_vllm = t.vllm_importance_sampling_correction = is_shape is not None
        t.model.zero_grad()
        loss = t._compute_loss(t.model, inputs)
        loss.backward()
        results.append((loss.detach(), {k: p.grad.clone() for k, p in t.model.named_parameters() if p.grad is not None}))
        t.model.zero_grad()
    (l_trl, g_trl), (l_ours, g_ours) = results
    torch.testing.assert_close(l_ours, l_trl)
    assert g_ours.keys() == g_trl.keys() and len(g_trl) > 0
    for k in g_trl:
        torch.testing.assert_close(g_ours[k], g_trl[k], msg=k)
    for key in TRL_LOSS_KEYS:
        assert ours._metrics[mode][key][-1] == pytest.approx(trl._metrics[mode][key][-1], rel=1e-6, abs=1e-9), key
    assert ours._metrics[mode]["clip_ratio/region_mean"][-1] > 0  # the batch does clip
    if delta is not None:
        assert ours._metrics[mode]["ctpo/clip_frac_dual"][-1] > 0  # and TRL's delta acted as the dual clip


# -----------------------------------------------------------------------------
# what is not carried over is refused, loudly and by name


@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(beta=0.04), "beta"),
        (dict(top_entropy_quantile=0.2), "top_entropy_quantile"),
        (dict(entropy_coef=0.01), "entropy_coef"),
        (dict(use_adaptive_entropy=True), "use_adaptive_entropy"),
        (dict(off_policy_mask_threshold=0.5), "off_policy_mask_threshold"),
        (dict(loss_type="cispo"), "loss_type"),
        (dict(loss_type="sapo"), "loss_type"),
        (dict(loss_type="vespo"), "loss_type"),
        (dict(importance_sampling_level="sequence"), "importance_sampling_level"),
        (dict(delta=2.0), "delta"),  # ctpo preset: no ratio window for TRL's two-sided clip
        (dict(ctpo_method="grpo", delta=1.1), "delta"),  # below 1 + epsilon_high: not a cap above the window
        (dict(ctpo_method="grpo", delta=2.0, ctpo_kwargs={"dual_c": 3.0}), "delta"),
        (dict(ctpo_method="cumulative"), "ctpo_method"),
        (dict(ctpo_backend="cuda"), "ctpo_backend"),
        (dict(ctpo_kwargs={"power": float("nan")}), "power"),
    ],
)
def test_options_not_carried_over_are_refused(tmp_path, kw, name):
    with pytest.raises(ValueError, match=name):
        config(CTPOConfig, tmp_path, **kw)


def test_config_checks_knob_names_and_trainer_needs_ctpo_config(tmp_path):
    with pytest.raises(TypeError, match="clip_hihg"):
        config(CTPOConfig, tmp_path, ctpo_kwargs={"clip_hihg": 0.1})
    with pytest.raises(TypeError, match="CTPOConfig"):
        CTPOTrainer(tiny_llama(), reward_a, config(GRPOConfig, tmp_path), train_dataset=DATA, processing_class=tokenizer())


def test_trl_clip_settings_reach_the_ratio_presets_only(tmp_path):
    args = config(CTPOConfig, tmp_path, ctpo_method="gspo", epsilon=3e-4, epsilon_high=4e-4, importance_sampling_level="sequence")
    assert ctpo_trl.ctpo_knobs(args) == dict(eps_low=3e-4, eps_high=4e-4)
    args = config(CTPOConfig, tmp_path, ctpo_method="grpo", epsilon=0.2, delta=2.0, ctpo_kwargs={"eps_high": 0.3})
    assert ctpo_trl.ctpo_knobs(args) == dict(eps_low=0.2, eps_high=0.3, dual_c=2.0)  # ctpo_kwargs win
    args = config(CTPOConfig, tmp_path, ctpo_method="ctpo", epsilon=0.1, ctpo_kwargs='{"clip_high": 0.1}')  # JSON, as on a CLI
    assert ctpo_trl.ctpo_knobs(args) == dict(clip_high=0.1)  # the adaptive window ignores epsilon
