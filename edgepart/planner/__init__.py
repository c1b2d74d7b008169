"""Cost models and solvers."""
