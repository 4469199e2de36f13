#!/usr/bin/python3
"""`make load`: N asynchronous submissions at concurrency C, each polled
until final and checked against its own expected output.

Every job prints something unique to it (a mix of Python, JavaScript, Bash
and a few C jobs), is submitted with `POST /v1/executions` (202), then
polled with `GET /v1/executions/{id}` until final. A job is *completed*
when it is `accepted` with exactly its expected stdout, *wrong* when it
finished any other way, *lost* when it was accepted by the API but never
became final before the deadline. Submissions that meet a transport error,
503 or 429 are retried (on the next api-server when there are several)
with back-off until the deadline. `load()` is also the engine of the chaos
drills (bench/chaos.py).
"""

import argparse
import concurrent.futures as cf
import itertools
import statistics
import sys
import threading
import time

from client import ApiError, Client
from stack import Stack

FINAL = {"accepted", "wrong_answer", "compile_error", "runtime_error", "time_limit_exceeded",
         "memory_limit_exceeded", "output_limit_exceeded", "internal_error"}


def normal_job(i):
    """(body, check) of the i-th ordinary job; check(result) -> bool."""
    n = i * 7919 % 1000003
    kind = i % 20
    if kind == 19:
        lang, src = "c", f'#include <stdio.h>\nint main(void){{printf("%d\\n", {n} * 3);return 0;}}\n'
        expected = f"{n * 3}\n"
    elif kind % 3 == 0:
        lang, src, expected = "javascript", f"console.log({n} + 1);", f"{n + 1}\n"
    elif kind % 3 == 1:
        lang, src, expected = "bash", f"echo job-{i}-$(( {n} * 2 ))", f"job-{i}-{n * 2}\n"
    else:
        lang, src, expected = "python", f"print('job', {i}, {n} ** 2)", f"job {i} {n ** 2}\n"
    body = {"language": lang, "source": src, "expected_output": expected, "tag": f"load-{i}"}
    return body, lambda r: r.get("status") == "accepted" and r.get("stdout") == expected


class Stats:
    """Counters of one load run (thread-safe)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.submitted = self.accepted = self.completed = self.wrong = self.lost = 0
        self.unsubmitted = self.retries = 0
        self.wrong_examples = []
        self.latencies = []  # seconds from first submit attempt to final seen

    def add(self, **kw):
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)


def submit(client, body, deadline, stats, start_port):
    """Job id once an api-server accepted the job, None at the deadline."""
    ports = client.ports
    k = start_port
    delay = 0.05
    while time.monotonic() < deadline:
        port = ports[k % len(ports)]
        try:
            status, res = client.request("POST", "/v1/executions", body, port=port)
            if status == 202:
                return res["id"], port
            if status not in (429, 503):
                raise RuntimeError(f"submission answered {status}: {res}")
        except ApiError:
            pass
        stats.add(retries=1)
        k += 1
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    return None, None


def poll(client, job_id, port, deadline):
    """The final result, None at the deadline. Switches replica on errors."""
    ports = client.ports
    k = ports.index(port)
    delay = 0.02
    while time.monotonic() < deadline:
        try:
            status, res = client.request("GET", f"/v1/executions/{job_id}", port=ports[k % len(ports)])
            if status == 200 and res.get("status") in FINAL:
                return res
            if status not in (200, 404, 503):
                raise RuntimeError(f"GET {job_id} answered {status}: {res}")
            if status != 200:
                k += 1
        except ApiError:
            k += 1
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)
    return None


def load(client, n, concurrency, job_fn=normal_job, timeout_s=300.0, progress=None):
    """Runs n jobs, `concurrency` at a time; returns Stats. `progress(done)`
    is called after each job (the chaos drills inject faults from it)."""
    stats = Stats()
    counter = itertools.count()
    done = itertools.count(1)
    deadline = time.monotonic() + timeout_s

    def worker(w):
        while True:
            i = next(counter)
            if i >= n:
                return
            body, check = job_fn(i)
            t0 = time.monotonic()
            stats.add(submitted=1)
            job_id, port = submit(client, body, deadline, stats, w)
            if job_id is None:
                stats.add(unsubmitted=1)
            else:
                stats.add(accepted=1)
                res = poll(client, job_id, port, deadline)
                if res is None:
                    stats.add(lost=1)
                    with stats.lock:
                        stats.wrong_examples.append(f"lost {job_id} ({body['tag']})")
                elif check(res):
                    stats.add(completed=1)
                    if body["tag"].startswith("load-"):  # ordinary jobs only
                        with stats.lock:
                            stats.latencies.append(time.monotonic() - t0)
                else:
                    stats.add(wrong=1)
                    with stats.lock:
                        stats.wrong_examples.append(
                            f"{body['tag']}: {res.get('status')} stdout={res.get('stdout')!r} "
                            f"message={res.get('message')!r}")
            if progress:
                progress(next(done))

    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(concurrency) as ex:
        for f in [ex.submit(worker, w) for w in range(concurrency)]:
            f.result()
    stats.elapsed = time.monotonic() - t0
    return stats


def summary(stats):
    lat = sorted(stats.latencies)
    p = (f", submit→final p50 {1000 * statistics.median(lat):.0f} ms p99 "
         f"{1000 * statistics.quantiles(lat, n=100, method='inclusive')[98]:.0f} ms") if len(lat) > 1 else ""
    return (f"submitted {stats.submitted}, completed {stats.completed}, wrong {stats.wrong}, "
            f"lost {stats.lost}, never accepted {stats.unsubmitted} (retried submissions {stats.retries}); "
            f"{stats.completed / stats.elapsed:.1f} jobs/s over {stats.elapsed:.1f} s{p}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("-c", type=int, default=32)
    ap.add_argument("--pool-size", type=int, default=4)
    args = ap.parse_args()
    stack = Stack(pool_size=args.pool_size)
    try:
        stats = load(Client([stack.apis[0].port]), args.n, args.c)
    except BaseException:
        stack.failed = True
        raise
    finally:
        stack.close()
    print(f"load: {args.n} jobs at concurrency {args.c}, pool size {args.pool_size}")
    print(summary(stats))
    for line in stats.wrong_examples[:10]:
        print("  " + line)
    ok = stats.wrong == 0 and stats.lost == 0 and stats.unsubmitted == 0 and stats.completed == args.n
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
