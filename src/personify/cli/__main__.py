"""``python -m personify.cli`` runs the command line."""

from __future__ import annotations

from personify.cli.main import main

main()
