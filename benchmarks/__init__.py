"""Benchmarks: ``python -m benchmarks.run`` (``make bench``: callbridge against a floor under
the same load) and ``python -m benchmarks.micro`` (per-frame media micro-benchmarks)."""
