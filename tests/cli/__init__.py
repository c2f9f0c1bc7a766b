"""Tests of the personify command line."""
