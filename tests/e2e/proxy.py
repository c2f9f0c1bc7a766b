"""An HTTP proxy for end-to-end tests: it sits between a real client and ``personify serve``,
records every request it passes on, and can answer the first requests to some paths with a
503 itself, as a load balancer in front of a busy collector would."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

# headers of one connection only (RFC 9110, section 7.6.1), never passed on
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
# httpx hands the body over decoded; the handler writes its own Date and Server
SET_BY_PROXY = frozenset({"content-encoding", "date", "server"})
UNAVAILABLE = json.dumps(
    {
        "error": {
            "code": "log_unavailable",
            "message": "the proxy failed this request on purpose",
            "details": None,
        },
        "code": "log_unavailable",
        "message": "the proxy failed this request on purpose",
    }
).encode()


@dataclass(frozen=True)
class Exchange:
    """One request through the proxy and the status it got back."""

    method: str
    path: str
    headers: dict[str, str]
    status: int
    failed_on_purpose: bool


@dataclass
class RecordingProxy:
    """Passes requests on to ``upstream``; the first ``fail_first`` POSTs to each path in
    ``fail_paths`` get a 503 (with CORS headers, so a browser script sees the status)."""

    upstream: str
    port: int
    fail_paths: frozenset[str] = frozenset()
    fail_first: int = 0
    exchanges: list[Exchange] = field(default_factory=list)
    _failures: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _httpd: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        """Where clients reach the proxy."""
        return f"http://127.0.0.1:{self.port}"

    def arm(self, fail_paths: Iterable[str] = (), fail_first: int = 0) -> None:
        """Forget what passed so far; fail the next ``fail_first`` POSTs to each path."""
        with self._lock:
            self.fail_paths = frozenset(fail_paths)
            self.fail_first = fail_first
            self._failures.clear()
            self.exchanges.clear()

    def requests(self, method: str, path: str) -> list[Exchange]:
        """The exchanges with ``method`` on ``path`` (the query string left out), in order."""
        with self._lock:
            return [e for e in self.exchanges if e.method == method and e.path == path]

    def _should_fail(self, method: str, path: str) -> bool:
        if method != "POST" or path not in self.fail_paths:
            return False
        with self._lock:
            done = self._failures.get(path, 0)
            if done >= self.fail_first:
                return False
            self._failures[path] = done + 1
            return True

    def _record(self, exchange: Exchange) -> None:
        with self._lock:
            self.exchanges.append(exchange)

    def start(self) -> None:
        """Listen on ``port`` in a background thread."""
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                headers = {k.lower(): v for k, v in self.headers.items()}
                if proxy._should_fail(self.command, path):
                    proxy._record(Exchange(self.command, path, headers, 503, True))
                    self._answer(
                        503,
                        [
                            ("content-type", "application/json"),
                            ("access-control-allow-origin", "*"),
                        ],
                        UNAVAILABLE,
                    )
                    return
                passed_on = [(k, v) for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP]
                answer = httpx.request(
                    self.command,
                    proxy.upstream + self.path,
                    headers=passed_on,
                    content=body,
                    timeout=30,
                )
                proxy._record(Exchange(self.command, path, headers, answer.status_code, False))
                self._answer(
                    answer.status_code,
                    [
                        (k, v)
                        for k, v in answer.headers.multi_items()
                        if k.lower() not in HOP_BY_HOP and k.lower() not in SET_BY_PROXY
                    ],
                    answer.content,
                )

            def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_OPTIONS = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Stop listening."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
