"""A small threaded HTTP server on 127.0.0.1 for download tests, with fault injection.

Each served path has bytes and behaviour. Persistent knobs (``etag``, ``last_modified``,
``ignore_range``, ``html``, ``gzip``, ``redirect_to``) apply to every request; ``plan`` is a list
of one-shot faults consumed one per GET of that path, for example::

    server.add("/a.pth", data, plan=[{"status": 503}, {"status": 503}])   # 503, 503, then 200
    server.add("/a.pth", data, plan=[{"drop_after": 1000}])                # close after 1000 bytes
    server.add("/a.pth", data, plan=[{"stall_after": 10, "stall": 5}])     # 10 bytes, then silence
    server.add("/a.pth", data, plan=[{}, {"wrong_offset": 7}])             # 2nd answer: bad 206
    server.add("/a.pth", data, plan=[{"throttle": 0.01}])                  # sleep per 64 KiB block
    server.add("/a.pth", data, plan=[{"throttle": 0.05, "block": 100}])    # a drip: 100 bytes per 0.05 s
    server.add("/a.pth", data, no_length=True)                             # no Content-Length: close ends it

Every request is recorded (method, path, headers) in ``server.requests`` for assertions.
Use the ``http_server`` fixture, or ``with FileServer() as server:``.
"""
from __future__ import annotations

import gzip as gzip_module
import hashlib
import re
import socket
import ssl
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

BLOCK = 64 * 1024


@dataclass
class Served:
    data: bytes
    etag: str | None = None
    last_modified: str | None = None
    ignore_range: bool = False
    html: bool = False
    gzip: str | None = None  # "label": raw bytes sent with Content-Encoding: gzip; "compress": real gzip
    redirect_to: str | None = None
    status: int | None = None  # every answer has this status (e.g. 404)
    no_length: bool = False  # no Content-Length: the body ends when the connection closes
    plan: list[dict[str, Any]] = field(default_factory=list)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]

    def header(self, name: str) -> str | None:
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                return v
        return None


HTML_PAGE = b"<!DOCTYPE html><html><head><title>Login</title></head><body>Please sign in.</body></html>\n"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # silence the default stderr log
        pass

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _answer(self, head: bool) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        with owner.lock:
            owner.requests.append(Request(self.command, path, dict(self.headers.items())))
            served = owner.files.get(path)
            step = served.plan.pop(0) if (served is not None and served.plan and not head) else {}
        if served is None:
            return self._plain(404, b"not found\n")
        status = step.get("status", served.status)
        if status is not None and status != 200:
            extra = {"Retry-After": str(step["retry_after"])} if "retry_after" in step else {}
            return self._plain(status, b"error\n", extra)
        if served.redirect_to:
            return self._plain(302, b"", {"Location": served.redirect_to})
        if served.html:
            return self._plain(200, HTML_PAGE, {"Content-Type": "text/html; charset=utf-8"})

        body = served.data
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        if served.etag:
            headers["ETag"] = served.etag
        if served.last_modified:
            headers["Last-Modified"] = served.last_modified
        if served.gzip == "compress":
            body = gzip_module.compress(body, mtime=0)
        if served.gzip:
            headers["Content-Encoding"] = "gzip"
        start = 0
        code = 200
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if rng and not served.ignore_range and served.gzip != "compress":
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            valid = if_range is None or if_range in (served.etag, served.last_modified)
            if m and valid:
                start = int(m.group(1))
                if start >= len(body):
                    return self._plain(416, b"", {"Content-Range": f"bytes */{len(body)}"})
                code = 206
                shown = start + step.get("wrong_offset", 0)
                headers["Content-Range"] = f"bytes {shown}-{len(body) - 1}/{len(body)}"
        payload = body[start:]
        if served.no_length:
            self.close_connection = True
            headers["Connection"] = "close"
        else:
            headers["Content-Length"] = str(len(payload))
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if head:
            return
        self._send_body(payload, step)

    def _send_body(self, payload: bytes, step: dict[str, Any]) -> None:
        owner = self.server.owner
        drop_after = step.get("drop_after")
        stall_after = step.get("stall_after")
        throttle = step.get("throttle")
        block = step.get("block", BLOCK)
        sent = 0
        view = memoryview(payload)
        try:
            while sent < len(payload):
                if stall_after is not None and sent >= stall_after:
                    self.wfile.flush()
                    owner.stopping.wait(step.get("stall", 30.0))
                    stall_after = None
                n = min(block, len(payload) - sent)
                for limit in (drop_after, stall_after):
                    if limit is not None:
                        n = min(n, limit - sent)
                self.wfile.write(view[sent : sent + n])
                sent += n
                if drop_after is not None and sent >= drop_after:
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if throttle:
                    self.wfile.flush()
                    if owner.stopping.wait(throttle):
                        return
        except OSError:  # the client went away (timeout, kill): nothing left to do
            self.close_connection = True

    def _plain(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if "Content-Type" not in (headers or {}):
            self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: FileServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up (timeout, retry, kill) is expected here, not a server fault; the
        # default handler would print a traceback into the stderr the tests inspect.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class FileServer:
    """Serves ``files`` (path -> bytes or Served) on 127.0.0.1 at a free port."""

    def __init__(self, files: dict[str, bytes | Served] | None = None, tls: tuple[Path, Path] | None = None):
        """``tls``: (certificate, key) PEM files to serve HTTPS instead (see :func:`self_signed`)."""
        self.scheme = "https" if tls else "http"
        self.files: dict[str, Served] = {}
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        for path, value in (files or {}).items():
            self.add(path, value)
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def add(self, path: str, data: bytes | Served, **behaviour: Any) -> Served:
        served = data if isinstance(data, Served) else Served(data=data, **behaviour)
        with self.lock:
            self.files[path] = served
        return served

    def gets(self, path: str) -> list[Request]:
        """The GET requests made for ``path``, in order."""
        with self.lock:
            return [r for r in self.requests if r.method == "GET" and r.path == path]

    def close(self) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FileServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by the openssl command: a client that trusts the
    certificate (``REQUESTS_CA_BUNDLE``) sees a valid HTTPS server, one that does not refuses it."""
    cert, key = folder / "loopback-cert.pem", folder / "loopback-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture
def http_server():
    """A running :class:`FileServer`, shut down after the test."""
    server = FileServer()
    try:
        yield server
    finally:
        server.close()
