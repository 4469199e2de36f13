#!/usr/bin/python3
"""CPU per job: what bounds throughput on a small machine.

Starts its own stack (bench/stack.py), moves the pod-manager into a fresh
v1 `cpuacct` cgroup (so every sandbox it starts from then on is counted
too), and for Bash `echo` and Python hello world jobs (synchronous, 8 at a
time) prints the CPU the pod-manager with its sandboxes (and the pod-manager
process alone, its own threads, from /proc), the api-server and
RabbitMQ (`beam.smp`, shared with anything else using the broker) spent per
job; then the CPU of one bare `/usr/bin/python3 -c` (getrusage). Needs root
and the cgroup v1 cpuacct controller at /sys/fs/cgroup/cpuacct.
"""

import argparse
import concurrent.futures as cf
import os
import resource
import subprocess
import sys
import time

from bench import BARE, CLEAN_ENV
from client import Client
from stack import Stack

CPUACCT = "/sys/fs/cgroup/cpuacct"
TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu_ms(pid):
    """utime + stime of a process, in ms."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return 1000 * (int(fields[11]) + int(fields[12])) / TICK


def block(client, lang, src, n, concurrency):
    def one(_):
        res, _, _ = client.run_sync(lang, src)
        if res.get("status") != "accepted":
            raise RuntimeError(f"{lang} job: {res}")
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as ex:
        list(ex.map(one, range(n)))
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("-c", type=int, default=8)
    args = ap.parse_args()
    cg = os.path.join(CPUACCT, f"warmpod-bench-cpu-{os.getpid()}")
    os.mkdir(cg)
    stack = None
    try:
        stack = Stack()
        with open(os.path.join(cg, "cgroup.procs"), "w") as f:
            f.write(str(stack.pod_manager.proc.pid))
        beam = subprocess.run(["pgrep", "-o", "beam.smp"], capture_output=True, text=True).stdout.split()
        client = Client([stack.apis[0].port])
        print(f"CPU per job, {args.n} synchronous jobs {args.c} at a time (ms):")
        print(f"{'job':<8} {'jobs/s':>7} {'pod-manager+sandboxes':>22} {'(pm alone)':>10} "
              f"{'api-server':>10} {'rabbitmq':>9}")
        for lang, src in (("bash", "echo hi"), ("python", 'print("Hello, World!")')):
            # Replaces the sandboxes started before the move into the cgroup.
            block(client, lang, src, 60, args.c)
            with open(os.path.join(cg, "cpuacct.usage")) as f:
                u0 = int(f.read())
            a0 = proc_cpu_ms(stack.apis[0].proc.pid)
            p0 = proc_cpu_ms(stack.pod_manager.proc.pid)
            b0 = proc_cpu_ms(beam[0]) if beam else 0
            rate = block(client, lang, src, args.n, args.c)
            with open(os.path.join(cg, "cpuacct.usage")) as f:
                u1 = int(f.read())
            a1 = proc_cpu_ms(stack.apis[0].proc.pid)
            p1 = proc_cpu_ms(stack.pod_manager.proc.pid)
            b1 = proc_cpu_ms(beam[0]) if beam else 0
            print(f"{lang:<8} {rate:7.1f} {(u1 - u0) / 1e6 / args.n:22.1f} "
                  f"{(p1 - p0) / args.n:10.1f} {(a1 - a0) / args.n:10.1f} {(b1 - b0) / args.n:9.1f}")
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        for _ in range(args.n):
            subprocess.run(BARE["python"], check=True, stdout=subprocess.DEVNULL, env=CLEAN_ENV)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        bare = 1000 * ((r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)) / args.n
        print(f"bare /usr/bin/python3 -c: {bare:.1f} ms CPU per spawn")
    except BaseException:
        if stack:
            stack.failed = True
        raise
    finally:
        if stack:
            stack.close()
        with open(os.path.join(cg, "cgroup.procs")) as f:
            left = f.read().split()
        for pid in left:  # nothing should be left; move it out so rmdir works
            with open(os.path.join(CPUACCT, "cgroup.procs"), "w") as f:
                f.write(pid)
        os.rmdir(cg)


if __name__ == "__main__":
    sys.exit(main())
