"""Real processes: a ``personify serve`` subprocess on a free port, with a source and an API key."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.conftest import service_missing

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext

PERSONIFY = [sys.executable, "-m", "personify.cli"]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(env: dict[str, str], *args: str) -> str:
    """Run a ``personify`` command and return its output (raises on failure)."""
    done = subprocess.run(
        [*PERSONIFY, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"personify {' '.join(args)} failed: {done.stderr}")
    return done.stdout


def printed_secret(output: str, label: str) -> str:
    """The value after ``label:`` in a command's output."""
    for line in output.splitlines():
        if line.startswith(label + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {label!r} in {output!r}")


@dataclass
class ServerProcess:
    """A ``personify serve`` subprocess that tests can kill and restart."""

    data_dir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    write_key: str = ""
    admin_key: str = ""

    @property
    def base_url(self) -> str:
        """Where the server listens."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the server and wait until /healthz answers."""
        log = open(self.data_dir / f"server-{self.port}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                *PERSONIFY,
                "serve",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                *self.extra_args,
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError("server did not become healthy")

    def kill(self) -> None:
        """SIGKILL the server: no shutdown hooks run."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM and wait (a clean shutdown)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def server_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a test server: its own data folder and a fixed PII key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONIFY_")}
    env.update(
        {
            "PERSONIFY_DATA_DIR": str(data_dir),
            "PERSONIFY_ENVIRONMENT": "test",
            "PERSONIFY_PII_HASH_KEY": "e2e-pii-key",
            "PERSONIFY_AUTH_CACHE_TTL_S": "0.5",
        }
    )
    env.update(extra)
    return env


def make_server(data_dir: Path, *extra_args: str, **env_extra: str) -> ServerProcess:
    """A configured (not yet started) server with a fresh source and admin key."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = server_env(data_dir, **env_extra)
    server = ServerProcess(data_dir=data_dir, env=env, extra_args=extra_args)
    server.write_key = printed_secret(cli(env, "sources", "create", "e2e"), "write key")
    server.admin_key = printed_secret(cli(env, "keys", "create", "e2e-admin"), "api key")
    return server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A running ``personify serve`` on a free port."""
    proc = make_server(tmp_path / "data")
    proc.start()
    yield proc
    proc.stop()


CHROMIUM = Path("/usr/bin/chromium")
# headless, and none of the background traffic this machine's closed network refuses
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium driven by Playwright, shared by a module's tests."""
    if not CHROMIUM.exists():
        service_missing("chromium is not installed at /usr/bin/chromium")
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        service_missing("chromium tests need the playwright package")
        raise
    with sync_playwright() as driver:
        try:
            chromium = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        except Error as exc:
            service_missing(f"chromium does not start: {exc}")
            raise
        yield chromium
        chromium.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile: no cookies, empty localStorage."""
    ctx = browser.new_context()
    yield ctx
    ctx.close()
