"""Benchmarks (``just bench``): scripts, not tests; they print figures and assert nothing."""
