"""The folder of prometheus_client's multiprocess mode, for ``personify serve --workers N``.

Each uvicorn process counts its own requests and events; a scrape reaches one of them. In
multiprocess mode every process writes its metrics to files in ``PROMETHEUS_MULTIPROC_DIR``
and the scraped one sums them all (``personify.api.metrics``). The variable must be set
before the processes start (the library reads it when imported), and the folder must start
empty, or counts of an earlier run would be added to this one's.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["MULTIPROC_ENV", "prepare_multiprocess_metrics"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_metrics(workers: int) -> Path | None:
    """With more than one process, point ``PROMETHEUS_MULTIPROC_DIR`` at an empty folder for
    the processes about to start, and return it.

    A folder named by the variable already is emptied of metric files and kept; otherwise a
    temporary one is made and removed when this process exits. One process needs none
    (unless the variable names one: then it is used all the same)."""
    named = os.environ.get(MULTIPROC_ENV)
    if named:
        folder = Path(named)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink()
        return folder
    if workers <= 1:
        return None
    folder = Path(tempfile.mkdtemp(prefix="personify-metrics-"))
    os.environ[MULTIPROC_ENV] = str(folder)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder
