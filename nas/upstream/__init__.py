"""Every use of an upstream library's private API, one small module per library.

Optuna and Ray Tune do not expose everything a crash-safe, two-backend search needs (a heartbeat around a trial run
outside ``Study.optimize``, failing a trial another process left running, the Optuna trial behind a Ray trial id).
Those uses live here and nowhere else, each behind a function named for what it does; ``tests/test_upstream.py``
exercises every one on the real library, so an upgrade that moves one fails there, by name, not deep inside a search.
pyproject.toml bounds the versions these were written against.
"""
