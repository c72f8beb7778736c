# The long-response toy (docs/toy.md, chapter 2): the pairs task, 68 pairs "r F(r)" then the end
# token, so every response the warm start teaches is 137 tokens. r is a free digit (the reward ignores it:
# ln 10 nats of uncertainty at every other position), F a fixed table; the warm start's teacher writes a
# random value instead of F(r) 30% of the time, so the policy starts out unsure of every value, evenly
# along the answer, and RL learns by sharpening them. log rho_t is then a sum of small, nearly independent
# per-token steps: its spread grows along the answer like a random walk's (Figure 1; what holds on every seed:
# docs/toy.md).
#
#     python train_tiny.py config/long.py                              # -> out-long/
#     python train_tiny.py config/long.py --method=grpo --out_dir=out-long-grpo
#
# Why this task: sort at ~130 digits collapsed under every RL update tried, a permutation walk had no random
# walk, and per-prompt lookup tables were never learned by the warm start (docs/toy.md, "What was tried first").

out_dir = "out-long"
task = "pairs"
n_pairs = 68
eval_size = 256  # greedy decoding of ~137 tokens: half the default held-out set keeps evaluation cheap
eval_interval = 50
ckpt_interval = 100
# warm start: the bigram is learned in ~100 steps; the teacher's noise is what stays for RL to fix
sft_steps = 150
teacher_noise = 0.3
# RL: temperature 1 (the warm start's uncertainty is the policy's real one, not the sampler's)
temperature = 1.0
lr = 2.5e-4  # 2.5x the default: 100 steps learn what 200 steps at 1e-4 did (docs/toy.md)
rl_steps = 100
