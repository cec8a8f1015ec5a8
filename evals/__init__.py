"""Evaluations of modelbus's answers (benchmarks, not tests): run by hand or from ``just``, never in CI."""
