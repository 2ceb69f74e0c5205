"""The version of edgeskip (one place; the package root and every record writer read it)."""

__version__ = "0.1.0"
