"""The HTTP/1.1 protocol ``personify serve`` runs: uvicorn's httptools protocol with a bound
on every request head, in bytes and in time.

uvicorn (0.55) bounds neither: its httptools parser takes a request head of any size (a
10 MB header is read, kept and handed to the app), and no timer runs while a head arrives,
so a client that sends one byte a second holds its connection and its buffers for ever
(uvicorn's ``timeout_keep_alive`` only runs between requests, after a response). Here:

* a head (request line and headers) over ``MAX_HEAD_BYTES`` is answered 431 and the
  connection closed, before the app sees it;
* a head that is not complete ``HEAD_TIMEOUT_S`` after its first byte, or after the
  connection opened, is answered 408 and the connection closed.

Bodies are the app's to bound (the collector refuses one past its limit with 413).
"""

from __future__ import annotations

import asyncio
from itertools import chain

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# the heads of Segment's and the browsers' requests are under 4 KB; nginx and Node stop at
# 8-16 KB, so 64 KB leaves room for large cookies and still bounds what a client can hold
MAX_HEAD_BYTES = 64 * 1024
# Go's servers commonly use 5-10 s for ReadHeaderTimeout; a head is a single packet or two
HEAD_TIMEOUT_S = 10.0


def _answer(status: bytes, message: bytes) -> bytes:
    return b"".join(
        [
            b"HTTP/1.1 ",
            status,
            b"\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n",
            b"content-length: ",
            str(len(message)).encode(),
            b"\r\n\r\n",
            message,
        ]
    )


_TOO_LARGE = _answer(
    b"431 Request Header Fields Too Large",
    f"the request line and headers are over {MAX_HEAD_BYTES} bytes".encode(),
)
_TIMEOUT = _answer(
    b"408 Request Timeout",
    f"the request line and headers did not arrive within {HEAD_TIMEOUT_S:g} s".encode(),
)


class BoundedHttpProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that refuses request heads over ``MAX_HEAD_BYTES`` (431) or
    slower than ``HEAD_TIMEOUT_S`` (408), closing the connection either way."""

    # class attributes, so that a test or an embedder can subclass with other bounds
    max_head_bytes = MAX_HEAD_BYTES
    head_timeout_s = HEAD_TIMEOUT_S

    _in_head = False
    # bytes of the unfinished head as they arrive (a head that arrives whole in one read is
    # measured when it is parsed, in on_headers_complete)
    _head_bytes = 0
    _head_timer: asyncio.TimerHandle | None = None
    # set once a head is refused: the rest of what was read is parsed but goes nowhere
    _refused = False

    def connection_made(  # type: ignore[override]
        self, transport: asyncio.Transport
    ) -> None:
        """Start the connection with its first head's clock running: a connection that is
        opened and never used is closed too."""
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the head clock."""
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser, then count what arrived while a head is unfinished."""
        if self.transport.is_closing():
            return
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        # the whole chunk counts when a head is unfinished after it: a chunk that also ends
        # the body of a pipelined request before is over-counted, never a head under-counted
        self._head_bytes += len(data)
        if self._head_bytes > self.max_head_bytes:
            self._refuse(_TOO_LARGE, f"a request head over {self.max_head_bytes} bytes")
        elif self._head_timer is None:
            self._start_head_timer()

    def on_message_begin(self) -> None:
        """A head starts: count its bytes from zero."""
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        """The head is whole: its clock stops, and the request goes to the app unless the
        head is over the bound."""
        self._in_head = False
        self._stop_head_timer()
        if self._refused:
            return
        # the parsed head: its target, and each header as sent (name, ": ", value, CRLF);
        # summed here in C, once, rather than in a Python callback per header
        parsed = len(self.url) + sum(map(len, chain.from_iterable(self.headers)))
        if parsed + 4 * len(self.headers) > self.max_head_bytes:
            self._refuse(_TOO_LARGE, f"a request head over {self.max_head_bytes} bytes")
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        """Hand body bytes to the request, unless its head was refused."""
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        """End the request's body, unless its head was refused."""
        if not self._refused:
            super().on_message_complete()

    def _start_head_timer(self) -> None:
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head or self.cycle is None:
            self._refuse(_TIMEOUT, f"a request head slower than {self.head_timeout_s:g} s")

    def _refuse(self, answer: bytes, reason: str) -> None:
        """Answer ``answer`` (unless a response is under way on the connection) and close."""
        self._stop_head_timer()
        self._refused = True
        if self.transport.is_closing():
            return
        self.logger.debug("closing a connection from %s: %s", self.client, reason)
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(answer)
        self.transport.close()
