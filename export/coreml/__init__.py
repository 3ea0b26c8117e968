"""Core ML export: ONNX -> ML Program converter, numpy reference executor, description checks, bundle packaging.

coremltools is an optional extra (`pip install shadowline[coreml]`); it is imported only inside the functions
that need it, so the rest of Shadowline never pays for it.
"""

from __future__ import annotations


def add_coreml(staging_dir, draft_manifest, reference, precision, progress):
    """Convert, save under staging_dir/coreml/, check on the reference inputs; return (checks, extras)."""
    from export.coreml.package import add_coreml as _add

    return _add(staging_dir, draft_manifest, reference, precision, progress)


__all__ = ["add_coreml"]
