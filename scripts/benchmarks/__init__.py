"""Benchmark scripts of the CoTr bundle (run by hand; not part of the test suite)."""
