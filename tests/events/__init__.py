"""Tests of personify.events."""
