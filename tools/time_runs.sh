#!/usr/bin/env bash
# Times train_tiny.py's default run and config/long.py, each alone (idle machine) and with one CPU-bound process
# beside it, at --threads=1 (the default) and --threads=2, and prints a table: wall time, CPU time (user + sys),
# the time to the first progress line, the longest gap between two lines, and what the run learned (held-out
# accuracy and reward before -> after, from its summary.json). Run it on an otherwise quiet machine
# (it says the load average before each run); the numbers in docs/toy.md ("Speed") come from it.
#
#     bash tools/time_runs.sh            # default run and long run: about 10 minutes on 2 idle cores
#     bash tools/time_runs.sh --quick    # the default run only: about 3 minutes
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
extra=${TIME_RUNS_EXTRA:-}  # more train_tiny.py arguments, e.g. to check this script quickly: "--rl_steps=2 --sft_steps=2"
tmp=$(mktemp -d)
hog=""
cleanup() { [ -n "$hog" ] && kill "$hog" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

runs=("default|")
[ "${1:-}" = "--quick" ] || runs+=("long|config/long.py")

# one timed run: wall, user+sys, first line, longest gap (seconds), from a Python wrapper that timestamps each line
timed() {  # name, threads, load (idle|hog), args...
    local name=$1 threads=$2 load=$3
    shift 3
    "$PY" - "$name" "$threads" "$load" "$@" <<'EOF'
import json, os, resource, subprocess, sys, time
name, threads, load, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
t0 = time.time()
p = subprocess.Popen([sys.executable, "train_tiny.py", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
stamps, last = [], ""
for line in p.stdout:
    stamps.append(time.time() - t0)
    last = line.strip() or last
rc = p.wait()
wall = time.time() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
gaps = [b - a for a, b in zip([0.0] + stamps, stamps)]
out = [a.split("=", 1)[1] for a in args if a.startswith("--out_dir=")][-1]
try:  # what the run learned: a thread count or a CPU changes a single run's result, not only its time
    s = json.load(open(os.path.join(out, "summary.json")))
    result = f"acc {100 * s['accuracy_before']:.1f} -> {100 * s['accuracy_after']:.1f}%, reward {s['reward_before']:.3f} -> {s['reward_after']:.3f}"
except (OSError, KeyError, ValueError):
    result = "-"
print(f"| {name} | {threads} | {load} | {wall:.1f} | {ru.ru_utime + ru.ru_stime:.1f} | {stamps[0] if stamps else float('nan'):.1f} | "
      f"{max(gaps) if gaps else float('nan'):.1f} | {os.getloadavg()[0]:.2f} | {result} | {'ok' if rc == 0 else f'exit {rc}'} |", flush=True)
if rc:
    print(last, file=sys.stderr)
EOF
}

echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| run | threads | beside it | wall (s) | CPU user+sys (s) | first line (s) | longest gap (s) | load after | result | |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for spec in "${runs[@]}"; do
    name=${spec%%|*}
    cfg=${spec#*|}
    for threads in 1 2; do
        timed "$name" "$threads" idle $cfg --threads=$threads --out_dir="$tmp/$name-$threads-idle" $extra
        "$PY" -c "while True: pass" &
        hog=$!
        timed "$name" "$threads" "1 busy process" $cfg --threads=$threads --out_dir="$tmp/$name-$threads-hog" $extra
        kill "$hog"
        wait "$hog" 2>/dev/null || true
        hog=""
    done
done
