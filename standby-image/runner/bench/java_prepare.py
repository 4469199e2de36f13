#!/usr/bin/python3
"""Pre-started Java in the runner alone: what preparing a sandbox costs and
what a hello world job (compile + run) then takes, with the bootstrap
precompiled (standby-image/build-java-boot.sh's jar and CDS archive) and
from source (the source-file launcher: `--java-boot-dir` without a jar),
against a bare `javac Main.java && java Main` with the language table's
flags, the three alternated run by run (so load from other work on a shared
machine hits them alike). Prints medians, p99s and ratios as Markdown.

    standby-image/runner/bench/java_prepare.py <path to warmpod-runner> [runs]

- preparation CPU: the CPU time (user + system) a serving runner
  (`--serve <socket> --prestart java`) and its two JVMs have used once they
  are idle, waiting for the job (sampled every 50 ms from /proc until it
  stays put for 300 ms), in ms;
- job: the wall time of `warmpod-runner --relay <socket>` with the job line
  (the per-job exec of a language pool's pod), from fork to exit, in ms;
- bare: the wall time of the two commands, one after the other, and their
  CPU time (children's rusage).
"""

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from startup import p99, timed

JVM = ["-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData"]
JAVAC = ["/usr/bin/javac"] + ["-J" + f for f in JVM] + ["-J-Xmx1024m", "-encoding", "UTF-8", "-d", ".", "Main.java"]
JAVA = ["/usr/bin/java"] + JVM + ["-Xmx256m", "-cp", ".", "Main"]
HELLO = 'public class Main { public static void main(String[] a) { System.out.println("Hello, World!"); } }'
JOB = {
    "id": "00000000-0000-4000-8000-000000000002",
    "language": "java",
    "files": [{"name": "", "content": HELLO}],
}
TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def tree_cpu_ms(root):
    """CPU time of `root` and its live descendants (their exited threads
    and reaped children included), in ms."""
    stats = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[1] is the ppid; [11..14] utime, stime, cutime, cstime.
        stats[int(entry)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, (0, 0))[1]
        todo.extend(p for p, (ppid, _) in stats.items() if ppid == pid)
    return total * TICK_MS


def prepared(runner, socket_path, boot_dir):
    """A serving runner pre-starting Java, once idle: (process, CPU ms)."""
    argv = [runner, "--serve", socket_path, "--prestart", "java"]
    if boot_dir is not None:
        argv += ["--java-boot-dir", boot_dir]
    server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    last, still_since = -1.0, None
    while True:
        if time.monotonic() > deadline:
            sys.exit("the serving runner never settled")
        cpu = tree_cpu_ms(server.pid)
        now = time.monotonic()
        if cpu != last or not os.path.exists(socket_path):
            last, still_since = cpu, now
        elif now - still_since >= 0.3:
            return server, cpu
        time.sleep(0.05)


def bare(work):
    """Wall ms and CPU ms of javac + java of the hello world in `work`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    subprocess.run(JAVAC, cwd=work, env=env, check=True)
    out = subprocess.run(JAVA, cwd=work, env=env, check=True, capture_output=True).stdout
    elapsed = (time.perf_counter() - start) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert out == b"Hello, World!\n", out
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    for name in os.listdir(work):
        if name.endswith(".class"):
            os.remove(os.path.join(work, name))
    return elapsed, cpu


def main():
    runner = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    work = tempfile.mkdtemp()
    os.chmod(work, 0o755)
    with open(os.path.join(work, "Main.java"), "w") as f:
        f.write(HELLO)
    job = os.path.join(work, "job")
    with open(job, "w") as f:
        f.write(json.dumps(JOB) + "\n")
    no_jar = os.path.join(work, "no-jar")
    os.mkdir(no_jar)
    socket_path = os.path.join(work, "serve.sock")
    variants = {"jar": None, "source": no_jar}
    figures = {"bare": [], "bare_cpu": []}
    for name in variants:
        figures[name] = []
        figures[name + "_prep"] = []
    for _ in range(runs):
        wall, cpu = bare(work)
        figures["bare"].append(wall)
        figures["bare_cpu"].append(cpu)
        for name, boot_dir in variants.items():
            server, prep = prepared(runner, socket_path, boot_dir)
            figures[name + "_prep"].append(prep)
            figures[name].append(timed([runner, "--relay", socket_path], job))
            if server.wait(timeout=30) != 0:
                sys.exit("the serving runner failed")
    shutil.rmtree(work)
    print(f"runs: {runs}, load average: {os.getloadavg()}")
    base = statistics.median(figures["bare"])
    print("| | median ms | p99 ms | median / bare |")
    print("|---|---|---|---|")
    rows = [
        ("bare `javac` + `java`, wall", "bare"),
        ("bare `javac` + `java`, CPU", "bare_cpu"),
        ("preparation CPU, precompiled bootstrap (jar + CDS)", "jar_prep"),
        ("preparation CPU, from source (source-file launcher)", "source_prep"),
        ("job (`--relay`), precompiled bootstrap", "jar"),
        ("job (`--relay`), from source", "source"),
    ]
    for label, key in rows:
        samples = figures[key]
        med = statistics.median(samples)
        ratio = f"{med / base:.2f}" if key in ("bare", "jar", "source") else "—"
        print(f"| {label} | {med:.0f} | {p99(samples):.0f} | {ratio} |")


if __name__ == "__main__":
    main()
