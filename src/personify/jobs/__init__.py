"""Scheduled work: run in-process by ``personify serve``, or once from the CLI for cron.

``schedule`` runs jobs periodically in the background of a server; ``retention`` holds the
retention jobs (profile pruning, event-log trimming) that both use.
"""
