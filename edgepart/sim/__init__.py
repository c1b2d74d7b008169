"""Discrete-event simulation of a Plan under a stream of requests (`simulate.py`) and SVG pictures of
plans and benchmark results (`draw.py`)."""
