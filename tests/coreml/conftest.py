"""Session fixtures of the Core ML tests: `coreml_bundles` (tests/conftest.py), the three shipped models exported
with --coreml per precision, each exported the first time a test asks for it (a targeted run pays only for what it
uses)."""

from __future__ import annotations

import pytest

pytest.importorskip("coremltools")
