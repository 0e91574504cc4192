"""The release number, written into every PNG's infotext (`Version: aidraw X`)."""

__version__ = "0.1.0"
