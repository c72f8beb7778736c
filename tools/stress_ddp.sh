#!/usr/bin/env bash
# Stress check of the DDP teardown (not run in CI). It runs every torchrun command of tests/test_train.py
# (test_ddp_matches_single_process: one; test_ddp_resume_is_exact: three, straight / first half / resumed),
# 2 gloo ranks on the CPU, N times in a loop with one CPU-bound process beside them: load makes a teardown race
# (a rank aborting after its work is done, "terminate called without an active exception") far more likely than
# in a single test run. A command fails when it exits non-zero or runs past 120 s (the tests' timeout).
# It prints one line per run, then the count of failed commands and runs and the stderr tail of each failure;
# the exit status is 1 when anything failed.
#
#     bash tools/stress_ddp.sh                   # 30 runs
#     bash tools/stress_ddp.sh --runs 5          # or STRESS_RUNS=5 bash tools/stress_ddp.sh
#     bash tools/stress_ddp.sh --root DIR        # the train_tiny.py of another checkout (e.g. an older commit)
#
# Time: a run (4 torchrun commands) takes about 30-40 s on a loaded 2-core machine, so 30 runs take 15-20 minutes.
# The outputs go to a temporary folder, deleted at the end (the failures' logs are printed first).
set -u
RUNS=${STRESS_RUNS:-30}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
while [ $# -gt 0 ]; do
  case $1 in
    --runs) RUNS=$2; shift 2 ;;
    --root) ROOT=$(cd "$2" && pwd); shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "stress_ddp.sh: unknown argument $1 (expected --runs N or --root DIR)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
TMP=$(mktemp -d /tmp/stress_ddp.XXXXXX)
$PY -c "while True: pass" &
LOAD_PID=$!
trap 'kill $LOAD_PID 2>/dev/null; rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM
# the tests' torchrun and argument lists (tests/test_train.py: TORCHRUN, TINY and each test's own arguments); the
# tests remove RANK, WORLD_SIZE, ... from the environment
TORCHRUN=($PY -m torch.distributed.run --standalone --nproc_per_node=2 train_tiny.py)
TINY=(--n_layer=1 --n_embd=32 --sft_steps=3 --sft_batch=8 --eval_size=16 --n_prompts=4 --group_size=2
      --num_minibatches=2 --eval_interval=2 --n_mistakes=1)
MATCH=(--sft_steps=0 --n_prompts=8 --num_minibatches=1 --ddp_union_batch=True --optimizer=sgd --lr=1.0 --lr_warmup=0 --grad_clip=0)
RESUME=(--n_prompts=8 --ckpt_interval=1)
failed_cmds=0 failed_runs=0 n_cmds=0 failures=()
t_begin=$(date +%s)
cd "$ROOT" || exit 2
echo "stress_ddp.sh: $RUNS runs of 4 torchrun commands in $ROOT, one CPU-bound process beside them"
for ((i = 1; i <= RUNS; i++)); do
  d=$TMP/run$i
  mkdir -p "$d"
  cmds=(
    "match|--out_dir=$d/ddp ${TINY[*]} ${MATCH[*]} --rl_steps=1"
    "straight|--out_dir=$d/straight ${TINY[*]} ${RESUME[*]} --rl_steps=4"
    "first-half|--out_dir=$d/resumed ${TINY[*]} ${RESUME[*]} --rl_steps=2"
    "resumed|--out_dir=$d/resumed ${TINY[*]} ${RESUME[*]} --rl_steps=4 --resume=True"
  )
  status="" run_failed=0 t0=$(date +%s)
  for entry in "${cmds[@]}"; do
    name=${entry%%|*}
    read -r -a args <<< "${entry#*|}"
    log=$d/$name
    env -u RANK -u WORLD_SIZE -u LOCAL_RANK -u MASTER_ADDR -u MASTER_PORT \
      timeout 120 "${TORCHRUN[@]}" "${args[@]}" > "$log.out" 2> "$log.err"
    rc=$?
    n_cmds=$((n_cmds + 1))
    if [ $rc -ne 0 ]; then
      failed_cmds=$((failed_cmds + 1)) run_failed=1
      status+=" $name:FAIL(rc=$rc)"
      failures+=("run $i, $name, exit status $rc:"$'\n'"$(tail -n 25 "$log.err")")
    else
      status+=" $name:ok"
    fi
  done
  failed_runs=$((failed_runs + run_failed))
  echo "run $i/$RUNS ($(($(date +%s) - t0)) s):$status"
  rm -rf "$d"/*/ckpt.pt  # keep the temporary folder small; the logs stay until the end
done
for f in "${failures[@]}"; do
  printf '\n---- %s\n' "$f"
done
echo
echo "failed commands: $failed_cmds of $n_cmds; failed runs: $failed_runs of $RUNS; $(($(date +%s) - t_begin)) s in all"
[ $failed_cmds -eq 0 ]
