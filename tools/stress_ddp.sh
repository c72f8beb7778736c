#!/usr/bin/env bash
# Stress check of the DDP teardown (not run in CI). It runs every torchrun command of tests/test_train.py, 2 gloo
# ranks on the CPU: test_ddp_matches_single_process (one), test_ddp_resume_is_exact (three: straight, first half,
# resumed) and test_ddp_teardown_frees_the_process_group (two: a run, and an error raised once the group exists;
# its check script comes from the test file), N times in a loop with one CPU-bound process beside them. Load makes
# a teardown race, a rank aborting after its work is done ("terminate called without an active exception", exit
# status 1 from torchrun), far more likely than in a single test run. A command fails when it exits non-zero or runs
# past 120 s (the tests' timeout). It prints one line per run, then the count of failed commands and runs and the
# stderr of each failure (its lines that name the cause: an abort, an error, a signal; then its tail); the exit
# status is 1 when anything failed.
#
#     bash tools/stress_ddp.sh                   # 30 runs
#     bash tools/stress_ddp.sh --runs 5          # or STRESS_RUNS=5 bash tools/stress_ddp.sh
#     bash tools/stress_ddp.sh --root DIR        # the train_tiny.py and tests of another checkout (an older commit);
#                                                # where its tests have no teardown check, those two commands are skipped
#
# Time: a run (6 torchrun commands) takes about 1.5-2 minutes on a 2-core machine with the CPU-bound process beside
# it, so 30 runs take 45-60 minutes. The outputs go to a temporary folder, deleted at the end.
#
# Measured on a 2-core machine shared with other jobs (load average 5-6 with the CPU-bound process):
#   bash tools/stress_ddp.sh --root DIR   # DIR: commit a9ee659 (before the teardown fix), 4 commands a run:
#     1 failed command of 120 (a rank aborted after the summary: "terminate called without an active exception"),
#     1 failed run of 30, 2285 s
#   bash tools/stress_ddp.sh              # at commit 82f5d6f (the fix and its test), 6 commands a run:
#     0 failed commands of 180, 0 failed runs of 30, 2766 s
set -u
RUNS=${STRESS_RUNS:-30}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
while [ $# -gt 0 ]; do
  case $1 in
    --runs) RUNS=$2; shift 2 ;;
    --root) ROOT=$(cd "$2" && pwd); shift 2 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
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
TORCHRUN=($PY -m torch.distributed.run --standalone --nproc_per_node=2)
TINY=(--n_layer=1 --n_embd=32 --sft_steps=3 --sft_batch=8 --eval_size=16 --n_prompts=4 --group_size=2
      --num_minibatches=2 --eval_interval=2 --n_mistakes=1)
MATCH=(--sft_steps=0 --n_prompts=8 --num_minibatches=1 --ddp_union_batch=True --optimizer=sgd --lr=1.0 --lr_warmup=0 --grad_clip=0)
RESUME=(--n_prompts=8 --ckpt_interval=1)
failed_cmds=0 failed_runs=0 n_cmds=0 failures=()
t_begin=$(date +%s)
cd "$ROOT" || exit 2
CHECK=$TMP/teardown_check.py  # the teardown test's script, written as the test writes it
if $PY -c "import sys; sys.path.insert(0, 'tests'); import test_train as t; open('$CHECK', 'w').write(t.TEARDOWN_CHECK.format(root=t.ROOT))" \
  2> /dev/null; then
  n_per_run=6
else
  n_per_run=4
  echo "stress_ddp.sh: no teardown check script from $ROOT/tests/test_train.py (no TEARDOWN_CHECK there): its two commands are skipped"
fi
echo "stress_ddp.sh: $RUNS runs of $n_per_run torchrun commands in $ROOT, one CPU-bound process beside them"
for ((i = 1; i <= RUNS; i++)); do
  d=$TMP/run$i
  mkdir -p "$d"
  cmds=(
    "match|train_tiny.py --out_dir=$d/ddp ${TINY[*]} ${MATCH[*]} --rl_steps=1"
    "straight|train_tiny.py --out_dir=$d/straight ${TINY[*]} ${RESUME[*]} --rl_steps=4"
    "first-half|train_tiny.py --out_dir=$d/resumed ${TINY[*]} ${RESUME[*]} --rl_steps=2"
    "resumed|train_tiny.py --out_dir=$d/resumed ${TINY[*]} ${RESUME[*]} --rl_steps=4 --resume=True"
  )
  if [ $n_per_run = 6 ]; then
    cmds+=(
      "teardown-run|$CHECK --out_dir=$d/teardown-run ${TINY[*]} --sft_steps=1 --rl_steps=1"
      "teardown-error|$CHECK --out_dir=$d/teardown-error ${TINY[*]} --n_prompts=3 --num_minibatches=1"
    )
  fi
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
      cause=$(grep -E "terminate called|Error|error|Signal|exitcode" "$log.err" | grep -v FutureWarning | head -n 12)
      failures+=("run $i, $name, exit status $rc:"$'\n'"$cause"$'\n'"[...] the last lines:"$'\n'"$(tail -n 12 "$log.err")")
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
