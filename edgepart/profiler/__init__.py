"""Measure a device: op micro-benchmarks and cost-model fitting (`run.py`, `microbench.py`), and the
HTTP network probe (`netprobe.py`). Not part of the pure core: it runs torch kernels and serves HTTP."""
