"""Benchmarks behind the README's figures; run them from the repository root as modules.

- ``python -m bench.chaos``: the chaos run of ``tests/workflows/test_chaos.py`` at scale.
- ``python -m bench.intake``: order intake latency next to the bare Temporal floor.

They import production code and ``tests.support`` like the tests do, with no ``sys.path`` edits.
"""
