"""Shadowline: from a trained visual-inspection model to a model trusted in production on field devices.

This package is the top floor: the one CLI and the demo, the only code that wires every package together.
"""

from runtime import __version__

__all__ = ["__version__"]
