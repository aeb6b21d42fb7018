"""CNN Designer's engine: pure NumPy, no Qt. Usable from plain Python, the CLI and the GUI."""

__version__ = "0.1.0"
