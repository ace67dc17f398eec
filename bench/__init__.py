"""Benchmarks: request budgets, cold start and drain rate (`make bench`); never timed tests."""
