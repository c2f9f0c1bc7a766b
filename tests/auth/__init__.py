"""Tests of personify.auth."""
