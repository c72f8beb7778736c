# The long-response toy (issue 11): sort 120-136 digits, so a response is 121-137 tokens (mean ~129 with
# the end token). A STARTING POINT, NOT TUNED: no run of this file has been measured to learn yet.
#
#     python train_tiny.py config/long.py                     # -> out-long/
#     python train_tiny.py config/long.py --lr=1e-5 --out_dir=out-long-lr1e-5
#
# What was measured before this file (sort 100-128 digits, the default 2x64 model, one run each, 2-core CPU):
# warm start 600 steps in 132 s -> held-out greedy exact match 26.8%, sampled reward 0.521; one RL step
# (16 prompts x 8, 4 mini-batches) 0.9-1.0 s; Figure 1 fits sigma*sqrt(t) with R^2 0.90-0.95. But RL did not
# learn: lr 1e-4 collapsed within ~10 steps, 3e-5 degraded, 2e-5 was flat (reward 0.521 -> 0.548).
# Ideas not yet tried: a weaker warm start and more RL steps, a larger RL batch, --optimizer=sgd (no
# +-lr sign steps), a task whose difficulty is spread evenly along the answer, a bigger model.
# Budget: warm start + RL should stay under 600 s on that CPU.

out_dir = "out-long"
# task: long answers
min_digits = 120
max_digits = 136
eval_size = 256  # greedy decoding of ~130 tokens: half the default held-out set keeps evaluation cheap
eval_interval = 50
ckpt_interval = 100
# warm start: long enough to be imperfect but not hopeless at this length (26.8% exact at 100-128 digits)
sft_steps = 600
# RL: the measured non-collapsing learning rate, a longer warmup, fewer steps to fit the time budget
lr = 2e-5
lr_warmup = 20
rl_steps = 300
