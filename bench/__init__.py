"""Benchmarks: each `bench_*.py` module has a `main(quick: bool) -> None` that prints tables."""
