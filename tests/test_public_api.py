"""The curated public surface of ``personify``: changing it is a deliberate act."""

from __future__ import annotations

import personify


def test_public_names_are_exactly_the_curated_set() -> None:
    assert sorted(personify.__all__) == sorted(
        [
            "BackendUnavailable",
            "Client",
            "ConfigurationError",
            "Conflict",
            "Forbidden",
            "NotFound",
            "PayloadTooLarge",
            "PersonifyError",
            "Settings",
            "Unauthorized",
            "UnsupportedMediaType",
            "ValidationError",
            "__version__",
        ]
    )
    for name in personify.__all__:
        assert hasattr(personify, name)


def test_every_error_derives_from_the_base_and_has_a_code() -> None:
    for name in personify.__all__:
        value = getattr(personify, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, personify.PersonifyError)
            assert value("x").code
