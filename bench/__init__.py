"""tsemu's benchmarks: `python -m bench` (or `make bench`) runs them all.

Every benchmark measures tsemu against a reference in the same run and reports the ratio,
because absolute times drift between machines and runs.
"""
