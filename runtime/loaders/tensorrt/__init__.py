"""TensorRT engines built on the device from a bundle's ONNX: version branching, device identity, optimisation
profile, engine cache, build, and the parity check that gates an engine into the cache.

Nothing here imports `tensorrt` or `pycuda` at module level: both exist only on the device (JetPack's apt packages
and a source-built pycuda), so they are imported inside the functions that need them.
"""

from __future__ import annotations
