"""The package version, written here once (the build reads it from this file too)."""

__version__ = "0.1.0"
