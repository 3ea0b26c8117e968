"""Shadowline: from a trained visual-inspection model to a model trusted in production on field devices."""

__version__ = "0.1.0"
