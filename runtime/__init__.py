"""The ground floor every Shadowline package stands on: the bundle contract (manifest, reading, signatures),
pre- and post-processing, runners and their loaders, the predictor, the error hierarchy and atomic file writes.

Nothing here imports export/, edge/, fleet/, hwbench/ or shadowline/ (the layers contract in tests enforces it).
"""

__version__ = "0.1.0"
