"""Build hook: compiles the C part of ingest, ``src/personify/ingest/_wire_native.c`` (the
wire path's common case).

It is an accelerator, not a requirement: where no C compiler (or no Python headers) is at
hand, the build warns and Personify runs its pure-Python path, which gives the same events.
``PERSONIFY_NO_NATIVE=1`` skips the compilation on purpose.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCES = (Path("src/personify/ingest/_wire_native.c"),)


class NativeBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    """Compile the extension next to its source; ship it in the wheel."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or os.environ.get("PERSONIFY_NO_NATIVE"):
            return
        built = [target for source in SOURCES if (target := self._compile(source)) is not None]
        if not built:
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        # ignored by git, so listed as artifacts for the wheel to include them
        build_data["artifacts"].extend(str(target.relative_to(self.root)) for target in built)

    def _compile(self, relative: Path) -> Path | None:
        """Compile one C source next to itself; None (and a warning) if that fails."""
        source = Path(self.root) / relative
        suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
        target = source.with_name(source.stem + suffix)
        compiler = shlex.split(sysconfig.get_config_var("CC") or "cc")
        command = [
            *compiler,
            "-O2",
            "-fPIC",
            "-shared",
            "-Wall",
            "-I",
            sysconfig.get_paths()["include"],
            str(source),
            "-o",
            str(target),
        ]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            self.app.display_warning(
                f"personify: {relative.name} was not built ({detail.strip()[:500]}); "
                "its Python equivalent runs instead"
            )
            return None
        return target
