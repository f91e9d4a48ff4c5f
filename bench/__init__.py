"""Benchmarks of taskplatform against bare Celery (see bench/README.md)."""
