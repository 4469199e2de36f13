"""A keep-alive HTTP/1.1 client of the warmpod API (one connection per
thread), and the programs the benchmarks submit."""

import http.client
import json
import socket
import threading
import time

HELLO = "Hello, World!"

# language -> (source, expected stdout)
PROGRAMS = {
    "python": ('print("Hello, World!")', HELLO + "\n"),
    "javascript": ('console.log("Hello, World!");', HELLO + "\n"),
    "c": ('#include <stdio.h>\nint main(void){puts("Hello, World!");return 0;}\n', HELLO + "\n"),
    "java": ('public class Main { public static void main(String[] a) { System.out.println("Hello, World!"); } }\n',
             HELLO + "\n"),
}


class ApiError(Exception):
    """A transport failure or an unexpected HTTP status."""


class Client:
    """Keep-alive connections to one or more api-servers, one per thread."""

    def __init__(self, ports, timeout=60.0):
        self.ports = list(ports)
        self.timeout = timeout
        self.local = threading.local()

    def _conn(self, port):
        conns = self.local.__dict__.setdefault("conns", {})
        c = conns.get(port)
        if c is None:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=self.timeout)
            c.connect()
            # The request goes out in one write; no Nagle delay on small bodies.
            c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conns[port] = c
        return c

    def _drop(self, port):
        c = self.local.__dict__.get("conns", {}).pop(port, None)
        if c is not None:
            c.close()

    def request(self, method, path, body=None, port=None):
        """(status, decoded JSON body). Raises ApiError on a transport error."""
        port = port or self.ports[0]
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (0, 1):
            try:
                c = self._conn(port)
                c.request(method, path, body=data, headers=headers)
                r = c.getresponse()
                raw = r.read()
                if r.getheader("connection", "").lower() == "close":
                    self._drop(port)
                return r.status, (json.loads(raw) if raw else None)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                # A kept-alive connection the server closed: retry once on a fresh one.
                self._drop(port)
                if attempt == 1:
                    raise ApiError(f"{method} {path} on :{port}: {e}") from e
            except (OSError, http.client.HTTPException) as e:
                self._drop(port)
                raise ApiError(f"{method} {path} on :{port}: {e}") from e
        raise AssertionError("unreachable")

    def run_sync(self, language, source, **extra):
        """POST /v1/executions?wait=true; returns (result, sent_ms, received_ms)."""
        body = {"language": language, "source": source, **extra}
        sent = time.time() * 1000
        status, res = self.request("POST", "/v1/executions?wait=true", body)
        received = time.time() * 1000
        if status != 200:
            raise ApiError(f"wait=true answered {status}: {res}")
        return res, sent, received
