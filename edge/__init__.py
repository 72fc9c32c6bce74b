"""Edge inspection daemon: capture, preprocess, infer, decide and publish."""

__version__ = "0.1.0"
