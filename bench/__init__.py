"""Benchmarks of the Shards Process Manager, side by side with Celery + Redis (``make bench``).

``python -m bench`` starts everything it measures (controllers, workers,
FerretDB, Redis, a Celery worker) as subprocesses, runs every scenario, prints
one table, writes ``bench/results/latest.json`` and stops what it started.
See ``bench/README.md``.
"""
