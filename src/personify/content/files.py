"""Catalog files: what ``personify import --catalog`` and ``personify content import`` read.

Three shapes, chosen by the file name:

* ``.json``: an export (``{"items": [...], "placements": [...]}``), or a list of items;
* ``.jsonl`` / ``.ndjson``: one item per line;
* ``.csv``: one product per row, with the e-commerce spec's columns (``product_id`` or
  ``sku`` as the id, ``name``, ``category``, ``price``, ``url``, ``image_url``; any other
  column becomes a field too, and ``tags`` splits on ``|``).

A line or row that cannot be read becomes an entry the import refuses with its reason, so the
rest of the file is still imported.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from personify.errors import ValidationError

__all__ = ["read_catalog_file"]

# a value that is not an object: the import reports it as the entry's problem
_UNREADABLE = "unreadable"


def _number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def _product_row(row: dict[str, str]) -> dict[str, Any]:
    product_id = (row.get("product_id") or row.get("sku") or "").strip()
    fields: dict[str, Any] = {}
    tags: list[str] = []
    for column, value in row.items():
        if column is None or value is None or value == "" or column in ("product_id", "tags"):
            continue
        fields[column] = _number(value) if column == "price" else value
    if row.get("tags"):
        tags = [tag.strip() for tag in row["tags"].split("|") if tag.strip()]
    elif isinstance(fields.get("category"), str):
        tags = [fields["category"]]
    return {"id": product_id, "type": "product", "fields": fields, "tags": tags}


def read_catalog_file(path: Path) -> dict[str, Any]:
    """The import body a catalog file holds (``ValidationError`` when the file as a whole
    cannot be read)."""
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"cannot read {path}: {exc}", code="invalid_file") from exc
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or not {"product_id", "sku"} & set(reader.fieldnames):
            raise ValidationError(
                f"{path.name}: a product CSV needs a product_id or sku column",
                code="invalid_file",
            )
        return {"items": [_product_row(row) for row in reader]}
    if suffix in (".jsonl", ".ndjson"):
        items: list[Any] = []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError:
                items.append(_UNREADABLE)
        return {"items": items}
    if suffix == ".json":
        try:
            body = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"{path.name} is not JSON: {exc}", code="invalid_file") from exc
        if isinstance(body, list):
            return {"items": body}
        if isinstance(body, dict):
            return body
        raise ValidationError(
            f"{path.name}: a catalog is an object with items and placements, or a list of items",
            code="invalid_file",
        )
    raise ValidationError(
        f"{path.name}: a catalog file is .json, .jsonl, .ndjson or .csv", code="invalid_file"
    )
