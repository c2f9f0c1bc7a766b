"""Feature definitions read from ``PERSONIFY_FEATURES_FILE`` on top of the defaults."""

from __future__ import annotations

import importlib
import json
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from personify.errors import ConfigurationError
from personify.profiles.features.compiled import FeatureSet
from personify.profiles.features.definitions import ProfileConfig


def load_profile_config(path: Path | None) -> ProfileConfig:
    """The profile config from a YAML, JSON or TOML file, or the defaults when ``path`` is None."""
    if path is None:
        return ProfileConfig()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read PERSONIFY_FEATURES_FILE {path}: {exc}", code="invalid_features"
        ) from exc
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ConfigurationError(
                f"{path} is not valid JSON: {exc}", code="invalid_features"
            ) from exc
    elif suffix == ".toml":
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(
                f"{path} is not valid TOML: {exc}", code="invalid_features"
            ) from exc
    elif suffix in (".yaml", ".yml"):
        try:
            yaml: Any = importlib.import_module("yaml")
        except ImportError as exc:
            raise ConfigurationError(
                "a YAML features file needs PyYAML (pip install pyyaml); or use JSON or TOML",
                code="missing_extra",
            ) from exc
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigurationError(
                f"{path} is not valid YAML: {exc}", code="invalid_features"
            ) from exc
    else:
        raise ConfigurationError(
            f"{path}: the features file must end in .yaml, .yml, .json or .toml",
            code="invalid_features",
        )
    try:
        config = msgspec.convert(raw or {}, ProfileConfig)
    except msgspec.ValidationError as exc:
        raise ConfigurationError(f"{path}: {exc}", code="invalid_features") from exc
    FeatureSet(config)  # validate every definition now, not on the first event
    return config
