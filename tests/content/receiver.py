"""A real webhook receiver for tests: an HTTP server on a free 127.0.0.1 port, in a thread,
that records every POST and answers as it is told (a status, a redirect, or too late)."""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec


@dataclass(frozen=True)
class Received:
    """One request the receiver got: path, headers (lower-case names) and the raw body."""

    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body, decoded."""
        return msgspec.json.decode(self.body)


class Receiver:
    """Records POSTs; answers the statuses queued with ``answer`` in order, then 200.

    A queued ``"slow"`` answers 200 only after ``slow_s`` seconds (a client's timeout goes
    first); a 3xx carries a ``Location`` to ``/moved`` on the same server.
    """

    def __init__(self, *, slow_s: float = 2.0) -> None:
        self.slow_s = slow_s
        self.requests: list[Received] = []
        self._answers: deque[int | str] = deque()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    answer = receiver._answers.popleft() if receiver._answers else 200
                if answer == "slow":
                    time.sleep(receiver.slow_s)
                    answer = 200
                assert isinstance(answer, int)
                self.send_response(answer)
                if 300 <= answer < 400:
                    self.send_header("Location", f"{receiver.url}/moved")
                reply = b"" if answer < 300 else f"refused with {answer}".encode()
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test reads self.requests, not stderr

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The base URL; any path under it is recorded."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def answer(self, *answers: int | str) -> None:
        """Answer the next requests with these statuses (or ``"slow"``), in order."""
        with self._lock:
            self._answers.extend(answers)

    def start(self) -> None:
        """Serve in the background."""
        self._thread.start()

    def close(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@contextmanager
def receiving(*, slow_s: float = 2.0) -> Iterator[Receiver]:
    """A started receiver, closed at the end."""
    receiver = Receiver(slow_s=slow_s)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.close()


def refused_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (a receiver that is down)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # the port was free a moment ago and nothing listens on it now: connecting is refused
    return f"http://127.0.0.1:{port}/hook"
