"""A pytest plugin, ``-p tests.native_build``: the tests use the compiled ingest module at
``$PERSONIFY_TEST_NATIVE_MODULE`` instead of the installed one.

``make sanitize`` builds that module with AddressSanitizer and UndefinedBehaviorSanitizer
into a temporary folder and runs the native tests with this plugin. It is loaded while pytest
reads its options, before any conftest imports Personify, so ``personify.ingest.wire``
finds this build already imported and binds to it.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

import pytest

_NAME = "personify.ingest._wire_native"


def _load(path: str) -> None:
    if _NAME in sys.modules or "personify.ingest.wire" in sys.modules:
        raise pytest.UsageError(f"{_NAME} was imported before tests.native_build could load it")
    loader = importlib.machinery.ExtensionFileLoader(_NAME, path)
    spec = importlib.util.spec_from_file_location(_NAME, path, loader=loader)
    if spec is None:
        raise pytest.UsageError(f"{path} is not an extension module")
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    sys.modules[_NAME] = module

    from personify.ingest import wire

    if wire._wire_record is not getattr(module, "wire_record", None):
        raise pytest.UsageError(f"personify.ingest.wire did not bind to {path}")


_PATH = os.environ.get("PERSONIFY_TEST_NATIVE_MODULE")
if not _PATH:
    raise pytest.UsageError("tests.native_build needs PERSONIFY_TEST_NATIVE_MODULE, a built module")
_load(_PATH)


def pytest_report_header() -> str:
    return f"compiled ingest module: {_PATH}"
