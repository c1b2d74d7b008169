"""edgepart: split one CNN across many small edge devices."""

__version__ = "0.1.0"
