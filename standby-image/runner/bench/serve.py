#!/usr/bin/python3
"""What a job's exec costs in a standby pod, without Kubernetes: the
one-shot runner (a generic pod: `warmpod-runner`, Python started cold)
against the relay to a serving runner whose interpreter is pre-started (a
language pool's pod: `warmpod-runner --relay <socket>`), with a bare
`/usr/bin/python3 -c 'print(1)'` as the baseline, the three alternated run
by run (so load from other work on a shared machine hits them alike).
Prints medians, p99s and ratios to the baseline as a Markdown table.

    standby-image/runner/bench/serve.py <path to warmpod-runner> [runs]

Each timed run is one fork + exec + waitpid of the command, the job line on
stdin from a file, stdout to /dev/null, in ms. For the relay, the serving
runner is started before the timed run and given 300 ms to pre-start its
interpreter (a standby pod waits far longer for its job); that start-up is
not timed, as a standby pod's is not on the job's path. The exec's own cost
through the API server and kubelet is not in any of these figures.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time

PYTHON = "/usr/bin/python3"
JOB = (
    '{"id":"00000000-0000-4000-8000-000000000001","language":"python",'
    '"files":[{"name":"","content":"print(\\"Hello, World!\\")"}]}\n'
)


def timed(argv, stdin_path):
    """Wall time of one run of argv, in ms; fails on a non-zero exit."""
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(os.open(stdin_path, os.O_RDONLY), 0)
            os.dup2(os.open("/dev/null", os.O_WRONLY), 1)
            os.execve(argv[0], argv, {})
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    elapsed = (time.perf_counter() - start) * 1000
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{argv} failed with {status}")
    return elapsed


def serving(runner, socket_path):
    """A serving runner pre-starting Python, listening at socket_path."""
    server = subprocess.Popen(
        [runner, "--serve", socket_path, "--prestart", "python"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not os.path.exists(socket_path):
        if time.monotonic() > deadline:
            sys.exit("the serving runner never listened")
        time.sleep(0.005)
    time.sleep(0.3)
    return server


def p99(samples):
    return statistics.quantiles(samples, n=100)[98]


def main():
    runner = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    work = tempfile.mkdtemp()
    job = os.path.join(work, "job")
    with open(job, "w") as f:
        f.write(JOB)
    empty = os.path.join(work, "empty")
    open(empty, "w").close()
    socket_path = os.path.join(work, "serve.sock")
    bare, cold, relay = [], [], []
    for _ in range(runs):
        bare.append(timed([PYTHON, "-c", "print(1)"], empty))
        cold.append(timed([runner], job))
        server = serving(runner, socket_path)
        relay.append(timed([runner, "--relay", socket_path], job))
        if server.wait(timeout=30) != 0:
            sys.exit("the serving runner failed")
    print(f"runs: {runs}, load average: {os.getloadavg()}")
    print("| command | median ms | p99 ms | median / bare | p99 / bare |")
    print("|---|---|---|---|---|")
    for name, samples in [
        ("bare `python3 -c 'print(1)'`", bare),
        ("`warmpod-runner` (generic pod's exec, cold)", cold),
        ("`warmpod-runner --relay` (language pool's exec, pre-started)", relay),
    ]:
        med, tail = statistics.median(samples), p99(samples)
        print(
            f"| {name} | {med:.1f} | {tail:.1f} | "
            f"{med / statistics.median(bare):.2f} | {tail / p99(bare):.2f} |"
        )


if __name__ == "__main__":
    main()
