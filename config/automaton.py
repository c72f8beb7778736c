# Entangled credit on the transformer toy (docs/lag.md): a walk on a fixed 3-state automaton (tasks.py,
# Automaton), 16 steps then the end token (17 tokens). Each step is a digit 3 s + x: a claim s about the state
# the walk is in and a free action x; a claim is right when it is the state the response's own actions reached.
# The warm start learns the rule as a bigram (the next claim follows from the digit before it) from a teacher
# that writes a random digit 30% of the time; a wrong claim then carries on to every later one, so a token
# earns credit only when its whole prefix is right. RL sharpens the claims. One mini-batch and one epoch per
# rollout: with rollout_lag = k, the sampler is exactly k optimizer updates behind the policy it trains.
#
#     python train_tiny.py config/automaton.py                                   # -> out-automaton/, ~15 s
#     python train_tiny.py config/automaton.py --rollout_lag=8 --method=grpo --out_dir=out-automaton-grpo
#     python compare.py config/automaton.py --methods=grpo,ctpo,ctpo:ratio=token --rollout_lag=0,2,8 \
#         --seeds=1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16 --out_dir=out-lag       # the comparison (docs/lag.md)
#
# Why this task: the lab (docs/lab.md, chapter 2) finds the cumulative ratio's correction matters when credit
# is entangled; sort and pairs have local credit. Walks whose next token needs a prompt token at a fixed
# distance, or the state written two tokens before, kept a 2x64 warm start on its plateau for 200-500 steps;
# a claim and an action in one digit make the rule a bigram, learned in ~100 steps (docs/lag.md).

out_dir = "out-automaton"
task = "automaton"
n_pairs = 16  # steps
eval_size = 128  # every prompt is the same ('='): the held-out reward is what varies (greedy decoding is one answer)
eval_interval = 10
ckpt_interval = 0
# warm start: the bigram is learned in ~100 steps; the teacher's noise is what stays for RL to fix
sft_steps = 200
teacher_noise = 0.3
# RL: temperature 1 (the warm start's uncertainty is the policy's real one); one update per rollout
temperature = 1.0
num_minibatches = 1
ppo_epochs = 1
rl_steps = 100
