"""Micro-benchmarks of the media path (``python -m benchmarks.run``)."""
