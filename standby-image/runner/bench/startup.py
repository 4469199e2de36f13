#!/usr/bin/python3
"""Start-up cost of warmpod-runner.

Times a Python hello world job through `warmpod-runner` against
`/usr/bin/python3 -c 'print(1)'` run directly, alternating the two commands
run by run (so load from other work on a shared machine hits both alike),
and prints the binary's size, the medians, the p99s and their ratios as a
Markdown table.

    standby-image/runner/bench/startup.py <path to warmpod-runner> [runs]

Each run is one posix_spawn + waitpid, stdin from a file, stdout to
/dev/null; the time is the wall time of that, in ms.
"""

import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

PYTHON = "/usr/bin/python3"
JOB = {
    "id": "00000000-0000-4000-8000-000000000001",
    "language": "python",
    "files": [{"name": "", "content": 'print("Hello, World!")'}],
}


def timed(argv, stdin_path):
    """Wall time of one run of argv, in ms; fails on a non-zero exit."""
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, stdin_path, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
    ]
    start = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, {}, file_actions=actions)
    _, status = os.waitpid(pid, 0)
    elapsed = (time.perf_counter() - start) * 1000
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{argv} failed with {status}")
    return elapsed


def p99(values):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    runner = os.path.abspath(sys.argv[1])
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    with tempfile.TemporaryDirectory() as tmp:
        job_path = os.path.join(tmp, "job.json")
        with open(job_path, "w") as f:
            f.write(json.dumps(JOB) + "\n")
        check = subprocess.run([runner], stdin=open(job_path), capture_output=True, text=True)
        if json.loads(check.stdout).get("status") != "accepted":
            sys.exit(f"the runner did not accept the hello world job: {check.stdout}")
        commands = {
            "runner": [runner],
            "python": [PYTHON, "-c", "print(1)"],
        }
        times = {name: [] for name in commands}
        for i in range(runs + 10):
            for name, argv in commands.items():
                t = timed(argv, job_path if name == "runner" else "/dev/null")
                if i >= 10:  # the first 10 rounds warm the caches
                    times[name].append(t)
    r_med, p_med = statistics.median(times["runner"]), statistics.median(times["python"])
    r_p99, p_p99 = p99(times["runner"]), p99(times["python"])
    size = os.path.getsize(runner)
    now = datetime.datetime.now(datetime.timezone.utc)
    print(f"Measured {now:%Y-%m-%d %H:%M} UTC as uid {os.getuid()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f} at the end, {runs} alternating runs each.")
    print()
    print("| | median | p99 |")
    print("|---|---|---|")
    print(f"| `warmpod-runner`, Python hello world job | {r_med:.1f} ms | {r_p99:.1f} ms |")
    print(f"| `/usr/bin/python3 -c 'print(1)'` | {p_med:.1f} ms | {p_p99:.1f} ms |")
    print(f"| ratio | {r_med / p_med:.2f} | {r_p99 / p_p99:.2f} |")
    print()
    print(f"Binary size: {size} bytes ({size / 1024 / 1024:.2f} MiB), release build, stripped.")


if __name__ == "__main__":
    main()
