"""Install the console's front-end libraries from npm and copy the files it serves into
``src/personify/ui/static/vendor/`` (git ignores that folder; ``make install`` runs this).

The versions are pinned in ``src/personify/ui/npm/package.json`` and its lock file; ``npm
ci`` installs exactly those in a scratch folder, never under ``src``. Nothing is fetched from
a CDN at run time: the server serves these copies at ``/console/static/vendor/``. Without
npm the console still works, without its live chart and live updates (every page reads
without JavaScript), and this script says so and exits 0 unless ``--require`` is given.

    python tools/vendor_console.py [--require]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "src" / "personify" / "ui" / "npm"
TARGET = ROOT / "src" / "personify" / "ui" / "static" / "vendor"
# the files the console serves: (package, path in the package, name served)
FILES = (
    ("htmx.org", "dist/htmx.min.js", "htmx.min.js"),
    ("htmx.org", "LICENSE", "htmx.LICENSE.txt"),
    ("htmx-ext-sse", "dist/sse.min.js", "htmx-sse.min.js"),
    ("htmx-ext-sse", "LICENSE", "htmx-sse.LICENSE.txt"),
    ("uplot", "dist/uPlot.iife.min.js", "uPlot.iife.min.js"),
    ("uplot", "dist/uPlot.min.css", "uPlot.min.css"),
    ("uplot", "LICENSE", "uPlot.LICENSE.txt"),
)


def _up_to_date() -> bool:
    """Whether every file is in place and newer than the lock file."""
    lock = MANIFEST / "package-lock.json"
    stamp = lock.stat().st_mtime
    return all(
        (TARGET / name).exists() and (TARGET / name).stat().st_mtime >= stamp
        for _, _, name in FILES
    )


def vendor(*, require: bool) -> int:
    if _up_to_date():
        return 0
    npm = shutil.which("npm")
    if npm is None:
        message = "npm is not installed: the console runs without its live chart"
        print(f"vendor_console: {message}", file=sys.stderr)
        return 1 if require else 0
    with tempfile.TemporaryDirectory(prefix="personify-console-npm-") as scratch:
        work = Path(scratch)
        for name in ("package.json", "package-lock.json"):
            shutil.copy2(MANIFEST / name, work / name)
        done = subprocess.run(
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=work,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            print(f"vendor_console: npm ci failed:\n{done.stderr[-2000:]}", file=sys.stderr)
            return 1 if require else 0
        TARGET.mkdir(parents=True, exist_ok=True)
        for package, path, name in FILES:
            shutil.copyfile(work / "node_modules" / package / path, TARGET / name)
    print(f"vendor_console: {len(FILES)} files in {TARGET.relative_to(ROOT)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--require", action="store_true", help="fail when npm is missing")
    return vendor(require=parser.parse_args().require)


if __name__ == "__main__":
    raise SystemExit(main())
