#!/usr/bin/env bash
# Size of the warmpod-runner binary and the wall time of a Python hello
# world job through it, against /usr/bin/python3 -c 'print(1)' directly,
# measured in the same hyperfine run: median, p99 and their ratio.
#
#   standby-image/runner/bench/startup.sh <path to warmpod-runner>
#   RUNS (default 300), WARMUP (default 20)
set -euo pipefail

runner=${1:?usage: $0 <path to warmpod-runner>}
runs=${RUNS:-300}
warmup=${WARMUP:-20}
command -v hyperfine >/dev/null || { echo "hyperfine missing: make deps (or apt-get install hyperfine)" >&2; exit 1; }

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
printf '%s\n' '{"id":"00000000-0000-4000-8000-000000000001","language":"python","files":[{"name":"","content":"print(\"Hello, World!\")"}]}' > "$dir/job.json"

# Sanity: the job must be accepted, or we would time a failure.
"$runner" < "$dir/job.json" | grep -q '"status":"accepted"' || { echo "the runner did not accept the hello world job" >&2; exit 1; }

runner_cmd="$runner < $dir/job.json"
python_cmd="/usr/bin/python3 -c 'print(1)' < /dev/null"
hyperfine --style basic --warmup "$warmup" --runs "$runs" --export-json "$dir/times.json" \
  "$runner_cmd" "$python_cmd" >&2

/usr/bin/python3 - "$dir/times.json" "$runner" "$runs" <<'PY'
import json, os, statistics, sys, datetime, platform

times_file, runner, runs = sys.argv[1], sys.argv[2], sys.argv[3]
results = json.load(open(times_file))["results"]

def stats(r):
    t = sorted(r["times"])
    p99 = t[min(len(t) - 1, int(round(0.99 * (len(t) - 1))))]
    return statistics.median(t) * 1000, p99 * 1000

(run_med, run_p99), (py_med, py_p99) = stats(results[0]), stats(results[1])
size = os.path.getsize(runner)
load = os.getloadavg()[0]
print(f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
      f"{os.cpu_count()} cores, load average {load:.2f} at the end, {runs} runs each")
print()
print(f"| | median | p99 |")
print(f"|---|---|---|")
print(f"| `warmpod-runner` (Python hello world job) | {run_med:.1f} ms | {run_p99:.1f} ms |")
print(f"| `/usr/bin/python3 -c 'print(1)'` | {py_med:.1f} ms | {py_p99:.1f} ms |")
print(f"| ratio runner / python3 | {run_med / py_med:.2f} | {run_p99 / py_p99:.2f} |")
print()
print(f"Binary: {size} bytes ({size / 1024 / 1024:.2f} MiB), release build.")
PY
