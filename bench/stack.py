"""The local warmpod stack a benchmark or drill runs against.

`Stack` makes sure RabbitMQ answers (scripts/ensure-rabbitmq.sh), then starts
the release `pod-manager` (local bubblewrap backend) and one or more
`api-server`s on free loopback ports with a queue prefix of their own, waits
until each is ready (`/readyz`; the pod-manager's metrics say it is
connected with a full pool), and stops everything it started on `close()`,
at exit, on SIGINT/SIGTERM, and on failure. Logs go to a temporary
directory that is kept when something went wrong.
"""

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
READY_TIMEOUT_S = 60.0


def target_dir():
    """The cargo target dir the release binaries live in."""
    return os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")


def free_port():
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=2.0):
    """(status, body) of a GET, (0, "") if nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (OSError, ValueError):
        return 0, ""


def wait_until(what, cond, timeout=READY_TIMEOUT_S, step=0.05):
    """Polls `cond` until it is truthy; raises after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(step)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def metric(text, name):
    """Sum of every sample of one Prometheus series in `text` (0 if absent)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def broker_address():
    """(host, port) of `AMQP_URL` (default port 5672)."""
    hostport = AMQP_URL.split("://", 1)[-1].rsplit("@", 1)[-1].split("/", 1)[0]
    host, _, port = hostport.partition(":")
    return host or "127.0.0.1", int(port or 5672)


def broker_up():
    """Whether RabbitMQ accepts TCP connections on `AMQP_URL`'s port (a
    private broker for drills: `AMQP_URL` with its port, and
    `RABBITMQ_NODENAME` for `rabbitmqctl`)."""
    try:
        with socket.create_connection(broker_address(), timeout=1):
            return True
    except OSError:
        return False


class Service:
    """One started process with its log file."""

    def __init__(self, name, argv, env, log_path):
        self.name = name
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self):
        return self.proc.poll() is None

    def kill(self, sig=signal.SIGKILL):
        if self.alive():
            self.proc.send_signal(sig)

    def stop(self, grace=15.0):
        """SIGTERM, then SIGKILL after `grace` seconds; reaps it."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait()
        self.log.close()


class Stack:
    """RabbitMQ (shared), one pod-manager and `apis` api-servers of our own."""

    def __init__(self, pool_size=4, apis=1, rust_log="info"):
        self.pool_size = pool_size
        self.rust_log = rust_log
        self.prefix = f"bench-{uuid.uuid4().hex[:8]}."
        self.logdir = tempfile.mkdtemp(prefix="warmpod-bench-")
        self.failed = False
        self.services = []
        self.pod_manager = None
        self.apis = []
        self.metrics_port = free_port()
        # BENCH_PROFILE=debug only to try the harness itself: figures need release.
        bins = os.path.join(target_dir(), os.environ.get("BENCH_PROFILE", "release"))
        self.pm_bin = os.path.join(bins, "pod-manager")
        self.api_bin = os.path.join(bins, "api-server")
        for b in (self.pm_bin, self.api_bin, os.path.join(bins, "warmpod-runner")):
            if not os.access(b, os.X_OK):
                raise SystemExit(f"{b} missing: cargo build --release -p api-server -p pod-manager -p warmpod-runner")
        self.profile = os.path.basename(bins)
        atexit.register(self.close)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        subprocess.run([os.path.join(ROOT, "scripts", "ensure-rabbitmq.sh")], check=True)
        try:
            self.start_pod_manager()
            for _ in range(apis):
                self.start_api()
        except BaseException:
            self.failed = True
            raise

    def _on_signal(self, signum, _frame):
        self.failed = True
        self.close()
        sys.exit(128 + signum)

    def _env(self, extra):
        env = dict(os.environ)
        env.update({
            "AMQP_URL": AMQP_URL,
            "WARMPOD_QUEUE_PREFIX": self.prefix,
            "RUST_LOG": self.rust_log,
        })
        env.update(extra)
        return env

    def pm_metrics(self):
        return http_get(f"http://127.0.0.1:{self.metrics_port}/metrics")[1]

    def settle(self, timeout=60.0):
        """Waits until the pod-manager has no job in flight, no sandbox
        starting and a full pool: it has refilled after the last job, so the next
        measurement does not share the CPU with that refill."""
        def idle():
            text = self.pm_metrics()
            return text and metric(text, "warmpod_pod_manager_pool_starting") == 0 and \
                metric(text, "warmpod_pod_manager_jobs_in_flight") == 0 and \
                metric(text, "warmpod_pod_manager_pool_ready") >= self.pool_size
        wait_until("the pod-manager to settle", idle, timeout=timeout, step=0.002)

    def start_pod_manager(self):
        """Starts the pod-manager and waits until it consumes with a full pool."""
        env = self._env({
            "WARMPOD_BACKEND": "local",
            "WARMPOD_POOL_SIZE": str(self.pool_size),
            "WARMPOD_METRICS_ADDR": f"127.0.0.1:{self.metrics_port}",
        })
        svc = Service("pod-manager", [self.pm_bin], env, os.path.join(self.logdir, "pod-manager.log"))
        self.services.append(svc)
        self.pod_manager = svc

        def ready():
            if not svc.alive():
                raise RuntimeError(f"pod-manager exited; see {svc.log_path}")
            text = self.pm_metrics()
            return (metric(text, "warmpod_pod_manager_broker_connected") >= 1
                    and metric(text, "warmpod_pod_manager_pool_ready") >= self.pool_size)
        wait_until("pod-manager ready", ready)
        return svc

    def restart_pod_manager(self, sig=signal.SIGKILL):
        """Kills the pod-manager with `sig` and starts a new one."""
        old = self.pod_manager
        old.kill(sig)
        old.proc.wait()
        old.log.close()
        self.services.remove(old)
        return self.start_pod_manager()

    def start_api(self):
        """Starts one more api-server and waits for `/readyz`."""
        port = free_port()
        env = self._env({"WARMPOD_HTTP_ADDR": f"127.0.0.1:{port}"})
        svc = Service(f"api-server-{len(self.apis)}", [self.api_bin], env,
                      os.path.join(self.logdir, f"api-server-{len(self.apis)}.log"))
        svc.port = port
        self.services.append(svc)
        self.apis.append(svc)

        def ready():
            if not svc.alive():
                raise RuntimeError(f"api-server exited; see {svc.log_path}")
            return http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200
        wait_until("api-server ready", ready)
        return svc

    def api_ready(self, svc):
        return http_get(f"http://127.0.0.1:{svc.port}/readyz")[0] == 200

    def close(self):
        """Stops everything started here (idempotent) and deletes our queues."""
        if not self.services and self.logdir is None:
            return
        for svc in reversed(self.services):
            try:
                svc.stop()
            except Exception as e:  # keep stopping the others
                print(f"stopping {svc.name}: {e}", file=sys.stderr)
        self.services = []
        if broker_up():
            # The jobs, dead-letter and callbacks queues and each api-server's
            # events queue (which would otherwise expire 5 minutes later).
            listed = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name"], capture_output=True,
                                    text=True, timeout=60, check=False).stdout.split()
            for q in [q for q in listed if q.startswith(self.prefix)]:
                subprocess.run(["rabbitmqctl", "-q", "delete_queue", q],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=60, check=False)
        if self.logdir:
            if self.failed:
                print(f"logs kept in {self.logdir}", file=sys.stderr)
            else:
                shutil.rmtree(self.logdir, ignore_errors=True)
            self.logdir = None
