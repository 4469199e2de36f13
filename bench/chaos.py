#!/usr/bin/python3
"""`make chaos`: scripted fault drills under load; each reports jobs
submitted / completed / lost, and fails unless nothing was lost or wrong.

Drills (all against a stack of our own, see bench/stack.py):

- `pod-manager`: SIGKILL the pod-manager a third into the load, start a new
  one; the broker redelivers its unacked jobs.
- `rabbitmq`: `rabbitmqctl stop_app`, then `start_app`, a third into the
  load (the broker is shared with this machine's CI: it is always brought
  back, also on failure, and waited for). Clients retry 503s.
- `api-server`: two api-servers; one is SIGKILLed a third into the load;
  clients retry their submissions and polls on the other.
- `abuse`: a probe runs synchronous Python hello worlds back to back,
  first beside ordinary jobs 2 at a time, then beside abusive ones (fork
  bombs, memory bombs, output floods, infinite loops) 2 at a time; its p50
  must stay within 2x. Then the mixed load: 1 job in `--abuse-every`
  (default 10) abusive, each checked for its verdict.
"""

import argparse
import signal
import statistics
import subprocess
import sys
import threading
import time

from client import PROGRAMS, Client
from load import load, normal_job, summary
from stack import Stack, broker_up, wait_until

ABUSE = [
    # (name, language, source, acceptable final statuses)
    ("fork bomb", "python",
     "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
     {"runtime_error", "time_limit_exceeded", "memory_limit_exceeded"}),
    ("memory bomb", "python", "a = []\nwhile True:\n    a.append(bytearray(1 << 20))\n",
     {"memory_limit_exceeded", "runtime_error"}),
    ("output flood", "python", "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
     {"output_limit_exceeded", "runtime_error"}),
    ("infinite loop", "python", "while True:\n    pass\n", {"time_limit_exceeded"}),
]
ABUSE_LIMITS = {"wall_time_ms": 2000, "cpu_time_ms": 1000, "memory_kb": 131072, "max_processes": 32}


def abusive_mix(every):
    """Jobs of which every `every`-th is abusive (checked against its
    acceptable verdicts), the others ordinary."""
    def job(i):
        if i % every != every - 1:
            return normal_job(i)
        return abusive_job(i // every)
    return job


def abusive_job(k):
    """The k-th abusive job, cycling through ABUSE."""
    name, lang, src, ok = ABUSE[k % len(ABUSE)]
    body = {"language": lang, "source": src, "limits": ABUSE_LIMITS, "tag": f"abuse-{k}-{name}"}
    return body, lambda r: r.get("status") in ok


def at_fraction(n, fraction, action):
    """A progress callback that runs `action` once, in its own thread,
    when `fraction` of the n jobs are done."""
    fired = threading.Event()
    threads = []

    def progress(done):
        if done >= int(n * fraction) and not fired.is_set():
            fired.set()
            t = threading.Thread(target=action)
            t.start()
            threads.append(t)
    progress.threads = threads
    return progress


def probe(client, stop, out):
    """Synchronous Python hello worlds back to back until `stop` is set."""
    src, expected = PROGRAMS["python"]
    while not stop.is_set():
        t0 = time.perf_counter()
        res, _, _ = client.run_sync("python", src)
        if res.get("stdout") != expected:
            raise RuntimeError(f"probe: {res}")
        out.append(time.perf_counter() - t0)


def load_with_fault(args, stack, fault):
    """Runs the load against every api-server of `stack`, firing `fault`
    (in its own thread) a third of the way in, and waits for the fault to
    finish; marks the stack failed (its logs are kept) if anything raises."""
    try:
        client = Client([a.port for a in stack.apis])
        prog = at_fraction(args.n, 1 / 3, fault)
        stats = load(client, args.n, args.c, progress=prog)
        for t in prog.threads:
            t.join()
        return stats
    except BaseException:
        stack.failed = True
        raise


def drill_pod_manager(args):
    stack = Stack(pool_size=args.pool_size)
    try:
        return load_with_fault(args, stack, lambda: stack.restart_pod_manager(signal.SIGKILL)), ""
    finally:
        stack.close()


def rabbitmqctl(*a):
    subprocess.run(["rabbitmqctl", "-q", *a], check=True, timeout=120,
                   stdout=subprocess.DEVNULL)


def drill_rabbitmq(args):
    stack = Stack(pool_size=args.pool_size)
    note = []

    def bounce():
        t0 = time.monotonic()
        try:
            rabbitmqctl("stop_app")
            note.append(f"broker down {time.monotonic() - t0:.1f} s after stop_app")
        finally:
            rabbitmqctl("start_app")
            wait_until("RabbitMQ back", broker_up, timeout=120)
            note.append(f"back after {time.monotonic() - t0:.1f} s")
    try:
        stats = load_with_fault(args, stack, bounce)
        return stats, "; ".join(note)
    finally:
        if not broker_up():
            subprocess.run(["rabbitmqctl", "-q", "start_app"], check=False, timeout=120)
        stack.close()


def drill_api_server(args):
    stack = Stack(pool_size=args.pool_size, apis=2)
    try:
        stats = load_with_fault(args, stack, lambda: stack.apis[0].kill(signal.SIGKILL))
        return stats, "api-server 0 SIGKILLed; clients retried on api-server 1"
    finally:
        stack.close()


def probed(client, background):
    """Probe latencies (seconds) while `background()` runs; its result."""
    out, stop = [], threading.Event()
    t = threading.Thread(target=probe, args=(client, stop, out))
    t.start()
    try:
        result = background()
    finally:
        stop.set()
        t.join()
    return out, result


def drill_abuse(args):
    stack = Stack(pool_size=args.pool_size)
    try:
        client = Client([stack.apis[0].port])
        # Isolation: the probe beside 2 jobs at a time (so it never waits
        # for a sandbox with a pool of 4), first ordinary jobs, then only
        # abusive ones; the difference is what the abuse costs a neighbour.
        t0 = time.monotonic()
        bg = max(1, args.pool_size // 2)
        k = args.abuse_jobs
        calm, calm_stats = probed(client, lambda: load(client, k * 4, bg))
        stressed, abuse_stats = probed(client, lambda: load(client, k, bg, job_fn=abusive_job))
        # Mixed load: 1 job in --abuse-every abusive, at the drill's concurrency.
        stats = load(client, args.n, args.c, job_fn=abusive_mix(args.abuse_every))
        c50, s50 = statistics.median(calm), statistics.median(stressed)
        stats.probe_ratio = s50 / c50
        for extra in (calm_stats, abuse_stats):
            stats.submitted += extra.submitted
            stats.completed += extra.completed
            stats.lost += extra.lost
            stats.wrong += extra.wrong
            stats.unsubmitted += extra.unsubmitted
            stats.wrong_examples += extra.wrong_examples
        stats.elapsed = time.monotonic() - t0
        note = (f"probe (sync Python hello world) p50 beside {bg} ordinary jobs at a time: "
                f"{1000 * c50:.0f} ms (n={len(calm)}); beside {bg} abusive jobs at a time "
                f"({k} jobs): {1000 * s50:.0f} ms (n={len(stressed)}): ratio {s50 / c50:.2f}; "
                f"mixed load (1 in {args.abuse_every} abusive) ordinary jobs submit->final p50 "
                f"{1000 * statistics.median(stats.latencies):.0f} ms")
        return stats, note
    except BaseException:
        stack.failed = True
        raise
    finally:
        stack.close()


DRILLS = {"pod-manager": drill_pod_manager, "rabbitmq": drill_rabbitmq,
          "api-server": drill_api_server, "abuse": drill_abuse}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=600, help="jobs per drill")
    ap.add_argument("-c", type=int, default=16)
    ap.add_argument("--pool-size", type=int, default=4)
    ap.add_argument("--abuse-every", type=int, default=10, help="abuse drill: every n-th job of the mixed load is abusive")
    ap.add_argument("--abuse-jobs", type=int, default=40, help="abuse drill: abusive jobs beside the probe")
    ap.add_argument("drills", nargs="*", default=list(DRILLS), help=" ".join(DRILLS))
    args = ap.parse_args()
    for name in args.drills:
        if name not in DRILLS:
            ap.error(f"unknown drill {name!r}; drills: {' '.join(DRILLS)}")
    failed = False
    results = []
    for name in args.drills:
        print(f"== drill {name}: {args.n} jobs at concurrency {args.c}", flush=True)
        stats, note = DRILLS[name](args)
        ok = stats.lost == 0 and stats.wrong == 0 and stats.unsubmitted == 0
        if name == "abuse" and stats.probe_ratio > 2.0:
            ok = False
        failed |= not ok
        line = f"{name}: {summary(stats)}"
        print(line)
        if note:
            print("  " + note)
        for ex in stats.wrong_examples[:10]:
            print("  " + ex)
        print("  OK" if ok else "  FAILED", flush=True)
        results.append((name, ok))
    print("\n" + ", ".join(f"{n} {'OK' if ok else 'FAILED'}" for n, ok in results))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
