#!/usr/bin/python3
"""Start-up cost of warmpod-runner.

Times a Python hello world job through `warmpod-runner` against
`/usr/bin/python3 -c 'print(1)'` run directly, alternating the two commands
run by run (so load from other work on a shared machine hits both alike),
and prints the binary's size, the medians, the p99s and their ratios as a
Markdown table.

    standby-image/runner/bench/startup.py <path to warmpod-runner> [runs] [--as-uid UID]

Each run is one fork + exec + waitpid, stdin from a file, stdout to
/dev/null; the time is the wall time of that, in ms. With --as-uid (root
only) both commands run as that uid, as the runner does in a sandbox or a
non-root pod (programs then run as the runner's own uid); without it, as
whoever runs the script (as root, the runner gives programs a dedicated
uid).
"""

import datetime
import json
import os
import shutil
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


def timed(argv, stdin_path, uid=None):
    """Wall time of one run of argv (as uid, if given), in ms; fails on a
    non-zero exit."""
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(os.open(stdin_path, os.O_RDONLY), 0)
            os.dup2(os.open("/dev/null", os.O_WRONLY), 1)
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            os.execve(argv[0], argv, {})
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    elapsed = (time.perf_counter() - start) * 1000
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{argv} failed with {status}")
    return elapsed


def p99(values):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def main():
    args = sys.argv[1:]
    uid = None
    if "--as-uid" in args:
        i = args.index("--as-uid")
        uid = int(args[i + 1])
        del args[i : i + 2]
    if not args:
        sys.exit(__doc__)
    built = os.path.abspath(args[0])
    runs = int(args[1]) if len(args) > 1 else 300
    with tempfile.TemporaryDirectory() as tmp:
        # A copy any uid can run (the build directory may be private).
        os.chmod(tmp, 0o755)
        runner = os.path.join(tmp, "warmpod-runner")
        shutil.copy(built, runner)
        os.chmod(runner, 0o755)
        job_path = os.path.join(tmp, "job.json")
        with open(job_path, "w") as f:
            f.write(json.dumps(JOB) + "\n")
        os.chmod(job_path, 0o644)
        check = subprocess.run(
            [runner], stdin=open(job_path), capture_output=True, text=True,
            user=uid, group=uid, extra_groups=[] if uid is not None else None,
        )
        if json.loads(check.stdout).get("status") != "accepted":
            sys.exit(f"the runner did not accept the hello world job: {check.stdout}")
        commands = {
            "runner": [runner],
            "python": [PYTHON, "-c", "print(1)"],
        }
        times = {name: [] for name in commands}
        for i in range(runs + 10):
            for name, argv in commands.items():
                t = timed(argv, job_path if name == "runner" else "/dev/null", uid)
                if i >= 10:  # the first 10 rounds warm the caches
                    times[name].append(t)
    r_med, p_med = statistics.median(times["runner"]), statistics.median(times["python"])
    r_p99, p_p99 = p99(times["runner"]), p99(times["python"])
    size = os.path.getsize(built)
    now = datetime.datetime.now(datetime.timezone.utc)
    as_uid = uid if uid is not None else os.getuid()
    print(f"Measured {now:%Y-%m-%d %H:%M} UTC as uid {as_uid}, {os.cpu_count()} cores, "
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
