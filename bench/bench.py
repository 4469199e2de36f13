#!/usr/bin/python3
"""`make bench`: warmpod end to end against the same programs spawned bare.

Starts its own stack (bench/stack.py), then in one run:

1. latency of a synchronous hello world (`POST /v1/executions?wait=true`)
   in Python, JavaScript, C and Java (compile + run), each sample
   alternating with the bare command on this machine (`/usr/bin/python3
   -c`, `/usr/bin/node -e`, `/usr/bin/gcc` or `/usr/bin/javac` with the
   product's flags + run), so drift hits both: p50, p90, p99 and the ratios
   e2e/bare. Python, JavaScript and Java run on pre-started sandboxes
   (`WARMPOD_PRESTART_LANGUAGES=python,javascript,java` unless set). Each
   sample starts once the pod-manager has settled (no job in flight, no
   sandbox starting: the refill the last job caused is done), so neither
   the e2e nor the bare sample shares the CPU with it (`--no-settle`:
   back to back, as before 2026-12-03);
2. throughput (jobs/s) of Python hello worlds at concurrency 1, 4, 8, 16,
   each block alternating with a block of the same number of bare spawns
   run 2 at a time (one per core);
3. where the time of a synchronous job goes: from each result's timestamps
   (`queued_at_ms`, `queue_ms`, `claim_ms`, `exec_ms`, `total_ms`,
   `wall_time_ms`) and the client's clock, and the pod-manager's
   `phase_seconds` histograms.

Prints tables; `--json FILE` also writes the raw figures.
"""

import argparse
import concurrent.futures as cf
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from client import HELLO, PROGRAMS, Client
from stack import Stack, metric

BARE = {
    "python": ["/usr/bin/python3", "-c", 'print("Hello, World!")'],
    "javascript": ["/usr/bin/node", "-e", 'console.log("Hello, World!")'],
}
# The sandbox gives programs a clean environment; so do the bare runs (this
# machine's NODE_EXTRA_CA_CERTS alone makes a bare `node -e` ~100 ms slower).
CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
GCC = ["/usr/bin/gcc", "-O2", "-std=gnu17", "-pipe", "-o", "main", "main.c", "-lm"]
# The language table's Java commands with the default limits (compile 1 GiB, run 256 MiB).
JVM_FLAGS = ["-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData"]
JAVAC = ["/usr/bin/javac"] + ["-J" + f for f in JVM_FLAGS] + ["-J-Xmx1024m", "-encoding", "UTF-8", "-d", ".", "Main.java"]
JAVA = ["/usr/bin/java"] + JVM_FLAGS + ["-Xmx256m", "-cp", ".", "Main"]
# Compiled languages: (source file, compile command, run command).
COMPILED = {"c": ("main.c", GCC, ["./main"]), "java": ("Main.java", JAVAC, JAVA)}


def pct(data):
    """(p50, p90, p99) of `data`."""
    q = statistics.quantiles(data, n=100, method="inclusive")
    return statistics.median(data), q[89], q[98]


class Bare:
    """Runs a language's hello world directly on the host."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="warmpod-bare-")
        for source, _, _ in COMPILED.values():
            with open(os.path.join(self.dir, source), "w") as f:
                f.write(PROGRAMS[{"main.c": "c", "Main.java": "java"}[source]][0])
        self.lock = threading.Lock()
        self.seq = 0

    def run(self, language):
        """Seconds one bare run took; checks its output."""
        t0 = time.perf_counter()
        if language in COMPILED:
            source, compile_cmd, run_cmd = COMPILED[language]
            # A directory per run, so parallel compiles do not share output.
            with self.lock:
                self.seq += 1
                d = os.path.join(self.dir, str(self.seq))
            os.mkdir(d)
            os.link(os.path.join(self.dir, source), os.path.join(d, source))
            subprocess.run(compile_cmd, cwd=d, check=True, env=CLEAN_ENV)
            out = subprocess.run(run_cmd, cwd=d, check=True, stdout=subprocess.PIPE, env=CLEAN_ENV).stdout
        else:
            out = subprocess.run(BARE[language], check=True, stdout=subprocess.PIPE, env=CLEAN_ENV).stdout
        took = time.perf_counter() - t0
        if out.decode() != HELLO + "\n":
            raise RuntimeError(f"bare {language} printed {out!r}")
        if language in COMPILED:
            subprocess.run(["rm", "-rf", d], check=True)
        return took

    def close(self):
        subprocess.run(["rm", "-rf", self.dir], check=False)


def e2e(client, language):
    """(seconds, result, sent_ms, received_ms) of one synchronous job."""
    source, expected = PROGRAMS[language]
    t0 = time.perf_counter()
    res, sent, received = client.run_sync(language, source)
    took = time.perf_counter() - t0
    if res.get("status") != "accepted" or res.get("stdout") != expected:
        raise RuntimeError(f"{language} job: {json.dumps(res)[:500]}")
    return took, res, sent, received


def latency(client, bare, language, samples, warmup, settle):
    """Alternating e2e/bare samples of one language; `settle()` runs before
    each sample (unless None), so that neither shares the CPU with the
    refill of the sandbox the last job used."""
    settle = settle or (lambda: None)
    for _ in range(warmup):
        e2e(client, language)
        settle()
        bare.run(language)
        settle()
    a, b, results = [], [], []
    for _ in range(samples):
        settle()
        took, res, sent, received = e2e(client, language)
        a.append(took)
        results.append((res, sent, received))
        settle()
        b.append(bare.run(language))
    return a, b, results


def throughput_block(client, concurrency, jobs):
    """jobs/s of `jobs` synchronous Python jobs, `concurrency` at a time."""
    def one(_):
        e2e(client, "python")
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as ex:
        list(ex.map(one, range(jobs)))
    return jobs / (time.perf_counter() - t0)


def bare_block(bare, jobs, parallel=2):
    """spawns/s of `jobs` bare Python runs, `parallel` at a time."""
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(parallel) as ex:
        list(ex.map(lambda _: bare.run("python"), range(jobs)))
    return jobs / (time.perf_counter() - t0)


def phases(results):
    """Per-phase medians (ms) of synchronous jobs, from their timestamps."""
    cols = {k: [] for k in ("http_in", "queue", "claim", "exec", "program", "pm_other", "delivery", "e2e")}
    for res, sent, received in results:
        q, c, x, t = res["queue_ms"], res["claim_ms"], res["exec_ms"], res["total_ms"]
        cols["http_in"].append(res["queued_at_ms"] - sent)
        cols["queue"].append(q)
        cols["claim"].append(c)
        cols["exec"].append(x)
        cols["program"].append(res["wall_time_ms"])
        cols["pm_other"].append(t - q - c - x)
        cols["delivery"].append(received - (res["queued_at_ms"] + t))
        cols["e2e"].append(received - sent)
    return {k: statistics.median(v) for k, v in cols.items()}


def histogram_means(before, after):
    """Mean of each pod-manager phase histogram between two scrapes (ms)."""
    out = {}
    for ph in ("queue", "claim", "exec", "total"):
        sel = f'warmpod_pod_manager_phase_seconds_%s{{phase="{ph}"}}'
        s = metric(after, sel % "sum") - metric(before, sel % "sum")
        n = metric(after, sel % "count") - metric(before, sel % "count")
        out[ph] = (1000 * s / n) if n else float("nan")
    return out


def machine():
    load = os.getloadavg()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "loadavg": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=200, help="latency samples for Python (JS: half, C: a quarter)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=60, help="jobs per throughput block")
    ap.add_argument("--rounds", type=int, default=3, help="alternating e2e/bare blocks per concurrency")
    ap.add_argument("--concurrency", default="1,4,8,16")
    ap.add_argument("--pool-size", type=int, default=4)
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--no-settle", action="store_true",
                    help="latency samples back to back, without waiting for the pool to refill after each job "
                         "(the refill then shares the CPU with the next sample, often the bare one)")
    ap.add_argument("--languages", default="python,javascript,c,java",
                    help="latency languages (Python: --samples, JS: half, C and Java: a quarter)")
    args = ap.parse_args()
    # Java's pre-start is opt-in (docs/operations.md); the bench measures it.
    os.environ.setdefault("WARMPOD_PRESTART_LANGUAGES", "python,javascript,java")

    stack = Stack(pool_size=args.pool_size)
    client = Client([stack.apis[0].port])
    bare = Bare()
    out = {"machine": machine(), "pool_size": args.pool_size, "settle": not args.no_settle}
    try:
        before = stack.pm_metrics()
        lat = {}
        all_results = {}
        counts = {"python": args.samples, "javascript": args.samples // 2, "c": args.samples // 4,
                  "java": args.samples // 4}
        for lang in args.languages.split(","):
            n = counts[lang]
            a, b, results = latency(client, bare, lang, max(n, 10), args.warmup,
                                    None if args.no_settle else stack.settle)
            lat[lang] = {"e2e": pct(a), "bare": pct(b), "n": len(a)}
            all_results[lang] = results
        after = stack.pm_metrics()
        out["latency_s"] = lat
        out["phases_ms"] = {lang: phases(r) for lang, r in all_results.items()}
        out["histogram_means_ms"] = histogram_means(before, after)
        out["warm_ratio"] = sum(r["warm"] for rs in all_results.values() for r, _, _ in rs) / sum(
            len(rs) for rs in all_results.values())

        levels = [int(c) for c in args.concurrency.split(",")]
        settle = (lambda: None) if args.no_settle else stack.settle
        tput = {}
        for c in levels:
            throughput_block(client, c, min(args.jobs, 2 * c))  # warm the connections
            e, b = [], []
            for _ in range(args.rounds):
                settle()
                e.append(throughput_block(client, c, args.jobs))
                settle()
                b.append(bare_block(bare, args.jobs))
            tput[c] = {"e2e": statistics.median(e), "bare": statistics.median(b)}
        out["throughput"] = tput
        out["machine"]["loadavg_end"] = machine()["loadavg"]
    except BaseException:
        stack.failed = True
        raise
    finally:
        bare.close()
        stack.close()
    report(out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


def report(out):
    m = out["machine"]
    print(f"\nwarmpod bench, {m['date']}, {m['cpus']} cpus, kernel {m['kernel']}, "
          f"load {m['loadavg']} -> {m['loadavg_end']}, pool size {out['pool_size']}")
    settled = ("each sample after the pool refilled" if out["settle"]
               else "back to back (--no-settle): refills overlap the next sample")
    print(f"\nLatency of one synchronous hello world (ms), e2e alternating with bare, {settled}:")
    print(f"{'language':<11} {'n':>4} | {'e2e p50':>8} {'p90':>7} {'p99':>7} | "
          f"{'bare p50':>8} {'p90':>7} {'p99':>7} | {'ratio p50':>9} {'p90':>5} {'p99':>5}")
    print(f"  pre-started: WARMPOD_PRESTART_LANGUAGES={os.environ.get('WARMPOD_PRESTART_LANGUAGES')}")
    for lang, v in out["latency_s"].items():
        e, b = [x * 1000 for x in v["e2e"]], [x * 1000 for x in v["bare"]]
        print(f"{lang:<11} {v['n']:>4} | {e[0]:8.1f} {e[1]:7.1f} {e[2]:7.1f} | "
              f"{b[0]:8.1f} {b[1]:7.1f} {b[2]:7.1f} | {e[0]/b[0]:9.2f} {e[1]/b[1]:5.2f} {e[2]/b[2]:5.2f}")
    print("  bare: /usr/bin/python3 -c, /usr/bin/node -e, /usr/bin/gcc -O2 -std=gnu17 -pipe + ./main,")
    print("        /usr/bin/javac + /usr/bin/java with the language table's flags; clean environment")
    print("\nThroughput, Python hello world (jobs/s), each e2e block alternating with a block of bare spawns 2 at a time:")
    print(f"{'concurrency':>11} | {'e2e':>7} | {'bare x2':>7} | {'ratio':>5}")
    for c, v in out["throughput"].items():
        print(f"{c:>11} | {v['e2e']:7.1f} | {v['bare']:7.1f} | {v['e2e']/v['bare']:5.2f}")
    print("\nWhere a synchronous job's time goes (medians, ms; 1 ms clock resolution):")
    cols = ["http_in", "queue", "claim", "exec", "program", "pm_other", "delivery", "e2e"]
    print(f"{'language':<11} " + " ".join(f"{c:>8}" for c in cols))
    for lang, v in out["phases_ms"].items():
        print(f"{lang:<11} " + " ".join(f"{v[c]:8.1f}" for c in cols))
    print("  http_in: client send -> api-server stamps the job (HTTP, parse, validate)")
    print("  queue: stamp -> pod-manager picks it up (publish, broker confirm, routing, delivery)")
    print("  claim: a ready sandbox taken from the pool; exec: job written to the runner -> result read")
    print("  program: the program's own run wall time inside exec, as the runner measured it (C, Java: without the compile)")
    print("  pm_other: pod-manager between pick-up and result publish, outside claim/exec")
    print("  delivery: result published -> api-server wakes the waiter -> client has the answer")
    h = out["histogram_means_ms"]
    print("pod-manager phase_seconds means over the latency runs (ms): " +
          ", ".join(f"{k} {v:.1f}" for k, v in h.items()) + f"; warm claims {out['warm_ratio']:.0%}")


if __name__ == "__main__":
    sys.exit(main())
