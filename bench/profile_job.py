#!/usr/bin/python3
"""Where the CPU of a Python hello world job goes, by process kind.

Starts its own stack (bench/stack.py), warms it up, then samples the whole
machine with `perf record -e cpu-clock -F <hz> -a` while N synchronous
Python hello world jobs run C at a time. Samples are split by process: the
stack's pod-manager, api-server and RabbitMQ (`beam.smp`) by pid, this
bench client by pid, sandbox processes (`bwrap`, `warmpod-runner`,
`python3` children) by command name, the rest as "other"; each in user and
kernel mode (by instruction address). Printed as CPU ms per job (samples /
hz / N). Other users of the machine (builds, other tests' sandboxes) land
in "other", or in the sandbox rows when they run bwrap or python3 too.
Needs root and /usr/bin/perf.
"""

import argparse
import collections
import concurrent.futures as cf
import os
import subprocess
import sys
import tempfile

from client import Client
from stack import Stack

SRC = 'print("Hello, World!")'
KERNEL = 0xFFFF800000000000


def run_jobs(client, n, c):
    def one(_):
        res, _, _ = client.run_sync("python", SRC)
        if res.get("status") != "accepted":
            raise RuntimeError(f"python job: {res}")
    with cf.ThreadPoolExecutor(c) as ex:
        list(ex.map(one, range(n)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=300, help="jobs sampled")
    ap.add_argument("-c", type=int, default=8, help="jobs at a time")
    ap.add_argument("--hz", type=int, default=999, help="samples per CPU second")
    args = ap.parse_args()
    stack = Stack()
    try:
        client = Client([stack.apis[0].port])
        run_jobs(client, 60, args.c)
        beam = subprocess.run(["pgrep", "-o", "beam.smp"], capture_output=True, text=True).stdout.split()
        known = {stack.pod_manager.proc.pid: "pod-manager", stack.apis[0].proc.pid: "api-server",
                 os.getpid(): "bench client"}
        if beam:
            known[int(beam[0])] = "rabbitmq"
        with tempfile.TemporaryDirectory() as d:
            data = os.path.join(d, "perf.data")
            perf = subprocess.Popen(["/usr/bin/perf", "record", "-q", "-e", "cpu-clock", "-F", str(args.hz),
                                     "-a", "-o", data], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                run_jobs(client, args.n, args.c)
            finally:
                perf.send_signal(2)
                perf.wait()
            out = subprocess.run(["/usr/bin/perf", "script", "-i", data, "-F", "pid,comm,ip"],
                                 capture_output=True, text=True, check=True).stdout
    finally:
        stack.close()
    counts = collections.Counter()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        comm, pid, ip = " ".join(parts[:-2]), int(parts[-2]), int(parts[-1], 16)
        if pid in known:
            who = known[pid]
        elif comm in ("bwrap", "warmpod-runner", "python3"):
            who = f"sandbox {comm}"
        elif comm == "swapper":
            who = "idle"
        else:
            who = "other"
        counts[(who, "kernel" if ip >= KERNEL else "user")] += 1
    per_job = lambda n: 1000 * n / args.hz / args.n
    rows = sorted({w for w, _ in counts}, key=lambda w: -(counts[(w, "user")] + counts[(w, "kernel")]))
    print(f"CPU ms per Python hello world job ({args.n} jobs, {args.c} at a time, perf cpu-clock {args.hz} Hz):")
    print(f"{'process':<24} {'user':>6} {'kernel':>7} {'total':>6}")
    for w in rows:
        u, k = counts[(w, "user")], counts[(w, "kernel")]
        print(f"{w:<24} {per_job(u):6.2f} {per_job(k):7.2f} {per_job(u + k):6.2f}")


if __name__ == "__main__":
    sys.exit(main())
