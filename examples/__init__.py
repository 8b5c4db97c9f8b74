"""Runnable examples: ``python -m examples.demo`` (what ``make run`` does)."""
