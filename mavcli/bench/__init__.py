"""Benchmarks that print figures (`mav bench ...`); never run as timed tests."""
