#!/usr/bin/python3
"""Where a synchronous job's time goes on the wire, to the microsecond.

Starts its own stack (bench/stack.py), captures the loopback traffic of the
api-server's HTTP port and of RabbitMQ (tcpdump, root), runs N synchronous
Python hello worlds one at a time, then finds each job's packets by its id
and prints the medians (p90) of the gaps between them:

  http_in     HTTP request reaches the api-server -> it publishes the job
  broker_in   job published -> the broker delivers it to the pod-manager
  pod_manager delivered -> the pod-manager publishes the final event
              (parse, claim, the run in the sandbox, building the event)
  broker_out  final event published -> the broker delivers it to the
              api-server (the first copy: the event, or the fast reply)
  api_out     delivered -> the api-server's HTTP answer leaves
  e2e         HTTP request -> HTTP answer, as seen on the wire

Packet timestamps are the kernel's when the packet crossed the loopback
interface, so the gaps include the sending and receiving processes' wake-ups
but not the benchmark client's. Needs tcpdump (`apt-get install tcpdump`).

    CARGO_TARGET_DIR=target /usr/bin/python3 bench/wire.py -n 200
"""

import argparse
import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time

from client import Client
from stack import Stack

STEPS = ("http_in", "broker_in", "pod_manager", "broker_out", "api_out", "e2e")


def packets(path):
    """(seconds, sport, dport, payload) of every TCP packet with data in a pcap."""
    with open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack("<I", data[:4])[0]
    if magic != 0xA1B2C3D4:
        raise SystemExit(f"unexpected pcap magic {magic:#x}")
    link = struct.unpack("<I", data[20:24])[0]
    off = 24
    while off + 16 <= len(data):
        sec, usec, incl, _ = struct.unpack("<IIII", data[off:off + 16])
        pkt = data[off + 16:off + 16 + incl]
        off += 16 + incl
        ip = pkt[14:] if link == 1 else pkt[16:] if link == 113 else pkt[4:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
            continue
        tcp = ip[(ip[0] & 15) * 4:]
        sport, dport = struct.unpack(">HH", tcp[:4])
        payload = tcp[(tcp[12] >> 4) * 4:]
        if payload:
            yield sec + usec / 1e6, sport, dport, payload


def amqp_ports(pid):
    """Local ports of `pid`'s connections to RabbitMQ."""
    out = subprocess.run(["ss", "-tnpH", "dst", "127.0.0.1:5672"], capture_output=True, text=True).stdout
    ports = set()
    for line in out.splitlines():
        if f"pid={pid}," in line:
            ports.add(int(line.split()[3].rsplit(":", 1)[1]))
    return ports


def analyse(pcap, http_port, api_amqp, pm_amqp, ids):
    """Per-job gaps (ms) between the packets of each id in `ids`."""
    first = {}  # (id, what) -> time

    def mark(key, t):
        first.setdefault(key, t)

    requests = []
    for t, sport, dport, p in packets(pcap):
        if dport == http_port and p.startswith(b"POST "):
            requests.append(t)
            continue
        for m in re.finditer(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", p):
            i = m.group().decode()
            if i not in ids:
                continue
            if sport == http_port:
                mark((i, "http_out"), t)
            elif dport == 5672 and sport in api_amqp and b"submitted_at_ms" in p:
                mark((i, "api_pub"), t)
            elif sport == 5672 and dport in pm_amqp and b"submitted_at_ms" in p:
                mark((i, "pm_deliver"), t)
            elif dport == 5672 and sport in pm_amqp and b'"result"' in p:
                mark((i, "pm_final"), t)
            elif sport == 5672 and dport in api_amqp and b'"result"' in p:
                mark((i, "api_final"), t)
    rows = []
    for i in ids:
        keys = ("api_pub", "pm_deliver", "pm_final", "api_final", "http_out")
        if not all((i, k) in first for k in keys):
            continue
        ts = [first[(i, k)] for k in keys]
        req = max((r for r in requests if r <= ts[0]), default=None)
        if req is None:
            continue
        marks = [req] + ts
        gaps = [1000 * (b - a) for a, b in zip(marks, marks[1:])]
        rows.append(gaps + [1000 * (marks[-1] - marks[0])])
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=200, help="synchronous Python jobs")
    ap.add_argument("--pool-size", type=int, default=4)
    args = ap.parse_args()
    stack = Stack(pool_size=args.pool_size)
    client = Client([stack.apis[0].port])
    tmp = tempfile.mkdtemp(prefix="warmpod-wire-")
    pcap = os.path.join(tmp, "lo.pcap")
    try:
        for _ in range(10):
            client.run_sync("python", 'print("Hello, World!")')
        api_amqp = amqp_ports(stack.apis[0].proc.pid)
        pm_amqp = amqp_ports(stack.pod_manager.proc.pid)
        port = stack.apis[0].port
        dump = subprocess.Popen(["tcpdump", "-i", "lo", "-s", "0", "-U", "-w", pcap,
                                 f"tcp port 5672 or tcp port {port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # tcpdump has no "capturing" signal; it only needs to be attached
        ids = set()
        for _ in range(args.n):
            res, _, _ = client.run_sync("python", 'print("Hello, World!")')
            ids.add(res["id"])
        time.sleep(0.5)
        dump.terminate()
        dump.wait()
    except BaseException:
        stack.failed = True
        raise
    finally:
        stack.close()
    rows = analyse(pcap, port, api_amqp, pm_amqp, ids)
    load = os.getloadavg()
    print(f"{len(rows)} of {args.n} jobs traced; load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("step         median      p90  (ms)")
    for k, col in zip(STEPS, zip(*rows)):
        q = statistics.quantiles(col, n=10)
        print(f"{k:<11} {statistics.median(col):7.3f}  {q[8]:7.3f}")
    os.unlink(pcap)
    os.rmdir(tmp)


if __name__ == "__main__":
    sys.exit(main())
