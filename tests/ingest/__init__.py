"""Tests of personify.ingest."""
