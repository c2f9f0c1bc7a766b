"""Tests of data subject rights: erasure, suppression, export."""
