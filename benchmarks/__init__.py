"""The benchmark suite of the Position Distributor: ``make bench`` (``python -m benchmarks``).

Never part of ``make test``. Each workload starts real nodes as a user does and prints its
numbers beside a baseline measured in the same run (the bare pipe, ``barepipe.py``).
"""
