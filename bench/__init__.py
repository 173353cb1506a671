"""Benchmarks of tiered_cache against plain dicts, cachetools, theine and raw redis-py.

Run ``make bench`` (or ``python -m bench --quick``, ``python -m bench --only l1``); see
:mod:`bench.__main__`. Every benchmark starts its own ``redis-server`` through
``tests.redis_harness`` and never touches the one on port 6379.
"""
