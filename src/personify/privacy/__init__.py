"""Data subject rights: erasure, suppression, export (docs/privacy.md)."""
