"""fsync off the event loop, without a thread: a tiny helper process that syncs a file.

The embedded log commits in the event loop (a transaction costs microseconds) and must not
answer before the WAL is on disk. An fsync takes 0.3 to 10 ms, too long to block the loop for;
a thread would do, but every hand-over of a thread's result needs the GIL, and while the loop
is busy each one waits out the interpreter's switch interval: the syncs queue up behind the
HTTP traffic. A process has its own interpreter: the loop writes one byte per sync request to
its stdin and reads one byte per answer from its stdout with ``add_reader``.

The helper syncs whenever it has requests and answers all of them together, so requests
that arrive during one fsync share the next: group commit for the sync too. fsync is per
file, not per descriptor or process, so the helper's fsync makes the log's writes durable.
It exits when its stdin closes, which also happens when the parent dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path

from personify.errors import BackendUnavailable

_REQUEST = b"s"
_DONE = b"k"[0]

# runs with ``python -I -S``: nothing but os and sys, started in a few milliseconds
_HELPER = """
import os, sys
path, folder = sys.argv[1], sys.argv[2]
folder_synced = False
while True:
    try:
        asked = os.read(0, 65536)
    except OSError:
        break
    if not asked:
        break
    answer = b"k"
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if not folder_synced:
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            folder_synced = True
    except OSError:
        answer = b"e"
    try:
        os.write(1, answer * len(asked))
    except OSError:
        break
"""

Callback = Callable[[BaseException | None], None]


class FsyncFailed(BackendUnavailable):
    """The helper's fsync itself failed: what was written since the last one may be lost."""


class FileSyncer:
    """Asks a helper process to fsync ``path``; calls back in the event loop when it has."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._process: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: deque[Callback] = deque()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the helper and watch its answers from ``loop``."""
        self._loop = loop
        self._spawn()

    def _spawn(self) -> None:
        assert self._loop is not None
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _HELPER, str(self.path), str(self.path.parent)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                close_fds=True,
            )
        except OSError as exc:
            raise BackendUnavailable(
                f"cannot start the event log's sync helper: {exc}", code="log_unavailable"
            ) from exc
        assert process.stdout is not None
        os.set_blocking(process.stdout.fileno(), False)
        self._loop.add_reader(process.stdout.fileno(), self._on_answers)
        self._process = process

    def sync(self, done: Callback) -> None:
        """fsync the file; ``done(None)`` once it is durable, ``done(error)`` if it may not be."""
        process = self._process
        if process is None or process.poll() is not None:
            # the helper died (its pending syncs were failed when its pipe closed): a new one
            try:
                self._discard()
                self._spawn()
            except BackendUnavailable as error:
                done(error)
                return
            process = self._process
        assert process is not None and process.stdin is not None
        try:
            os.write(process.stdin.fileno(), _REQUEST)
        except OSError as exc:
            done(BackendUnavailable(f"the event log's sync helper is gone: {exc}"))
            return
        self._waiting.append(done)

    @property
    def helper_pid(self) -> int | None:
        """The helper process's pid while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def pending(self) -> int:
        """Syncs asked for and not answered yet."""
        return len(self._waiting)

    def _on_answers(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None
        try:
            answers = os.read(process.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        except OSError:
            answers = b""
        if not answers:
            self._discard()
            error = BackendUnavailable("the event log's sync helper exited")
            while self._waiting:
                self._waiting.popleft()(error)
            return
        for answer in answers:
            if not self._waiting:
                break
            done = self._waiting.popleft()
            done(None if answer == _DONE else FsyncFailed("fsync of the event log failed"))

    def _discard(self) -> None:
        """Stop watching a helper that is gone, and reap it."""
        process = self._process
        if process is None:
            return
        self._process = None
        if self._loop is not None and process.stdout is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(process.stdout.fileno())
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        if process.poll() is None:
            process.kill()
        process.wait()

    def close(self) -> None:
        """Stop the helper; call once no sync is pending."""
        process = self._process
        if process is None:
            return
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
        self._discard()
