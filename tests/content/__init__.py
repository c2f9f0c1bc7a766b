"""Tests of the content catalog: items, placements, versions, publishing, import and export, webhooks."""
