"""Tests of personify.eventlog adapters beyond the shared contract."""
