"""The version of lth (one place: the package, its run records and tickets read it)."""

__version__ = "0.1.0"
