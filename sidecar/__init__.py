"""plasma-sidecar: a localhost daemon that owns the image-generation device for a manga page pipeline."""

__version__ = "0.1.0"
