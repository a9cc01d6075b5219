"""An HTTP proxy on 127.0.0.1 that forwards to the moto server and injects real faults on chosen requests:
HTTP error responses with an S3 error body (503 SlowDown, 403 AccessDenied...), a reset connection, or a
stall (read the first ``stall_after`` bytes of the body, then neither read more nor answer until closed).

Loaded by tests/storage/conftest.py (``fault_proxy`` fixture); not a test module.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@dataclass
class Fault:
    method: str  # "PUT", "GET", ... or "*"
    kind: str  # "reset", "stall" or an HTTP status such as "503"
    code: str = "SlowDown"
    times: int = 1
    match: str = ""  # only requests whose path (with query) contains this
    stall_after: int = 0  # "stall": the body bytes read before the proxy stops reading


class FaultProxy:
    """Forward everything to ``upstream``; apply queued faults to the first matching requests."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.faults: deque[Fault] = deque()
        self.log: list[tuple[str, str, str]] = []  # (method, path, "ok" | fault kind)
        self._guard = threading.Lock()
        self.closing = threading.Event()  # releases stalled requests
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def fail(self, method: str, kind: str, times: int = 1, code: str = "SlowDown", match: str = "",
             stall_after: int = 0) -> None:
        with self._guard:
            self.faults.append(Fault(method, kind, code, times, match, stall_after))

    def take(self, method: str, path: str) -> Fault | None:
        with self._guard:
            for fault in self.faults:
                if fault.method in ("*", method) and fault.times > 0 and fault.match in path:
                    fault.times -= 1
                    return fault
        return None

    def count(self, method: str, outcome: str | None = None) -> int:
        return sum(1 for m, _, o in self.log if m == method and (outcome is None or o == outcome))

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FaultProxy

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        fault = self.owner.take(self.command, self.path)
        self.owner.log.append((self.command, self.path, fault.kind if fault else "ok"))
        if fault is not None and fault.kind == "stall":
            self.rfile.read(fault.stall_after)  # then stop reading: the client's send buffer fills and blocks
            self.owner.closing.wait()
            self.close_connection = True
            return
        body = self._body()
        if fault is not None and fault.kind == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        if fault is not None:
            payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault.code}</Code>'
                       f"<Message>injected by the test proxy</Message></Error>").encode()
            self._reply(int(fault.kind), [("Content-Type", "application/xml")], payload)
            return
        upstream = http.client.HTTPConnection(self.owner.upstream.hostname, self.owner.upstream.port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            upstream.request(self.command, self.path, body=body if body or self.command in ("PUT", "POST")
                             else None, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            dropped = HOP_BY_HOP if self.command == "HEAD" else HOP_BY_HOP | {"content-length"}
            self._reply(response.status, [(k, v) for k, v in response.getheaders() if k.lower() not in dropped],
                        data)
        finally:
            upstream.close()

    def _reply(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        if self.command != "HEAD" or not any(k.lower() == "content-length" for k, _ in headers):
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle
