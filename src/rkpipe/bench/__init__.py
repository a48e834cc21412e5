"""Benchmark statistics and result rows."""
