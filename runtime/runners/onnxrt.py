"""ONNX Runtime backend. ORT silently falls back to the CPU when a requested provider is missing, so the
providers actually active are read back, reported, and (with `require_providers`) enforced."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.errors import BackendUnavailable
from runtime.runners.base import Runner, TensorMeta

_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
           "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(uint8)": "uint8"}

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"

    def __init__(
        self,
        model_path: Path | str,
        providers: list[str | tuple[str, dict]] | None = None,
        threads: int | None = None,
        require_providers: bool = False,
        session_config: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.model_path = Path(model_path)
        self.requested = [self._normalise(p) for p in (providers or ["CPUExecutionProvider"])]
        self.threads = threads
        self.require_providers = require_providers
        self.session_config = dict(session_config or {})
        self._session = None
        self._output_names: list[str] = []
        self.active_providers: list[str] = []

    @staticmethod
    def _normalise(p: str | tuple[str, dict]) -> str | tuple[str, dict]:
        if isinstance(p, tuple):
            return (PROVIDER_ALIASES.get(p[0].lower(), p[0]), p[1])
        return PROVIDER_ALIASES.get(p.lower(), p)

    def _load(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:  # pragma: no cover - a core dependency
            raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime") from err
        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        for key, value in self.session_config.items():
            opts.add_session_config_entry(key, str(value))
        available = set(ort.get_available_providers())
        names = [p[0] if isinstance(p, tuple) else p for p in self.requested]
        missing = [n for n in names if n not in available]
        if missing and self.require_providers:
            raise BackendUnavailable(
                f"onnxruntime providers {missing} are not available (available: {sorted(available)}); "
                "install onnxruntime-gpu (NVIDIA's Jetson wheel on a Jetson)"
            )
        usable = [p for p in self.requested if (p[0] if isinstance(p, tuple) else p) in available]
        session = ort.InferenceSession(str(self.model_path), sess_options=opts,
                                       providers=usable or ["CPUExecutionProvider"])
        self._session = session
        self.active_providers = list(session.get_providers())
        self._output_names = [o.name for o in session.get_outputs()]  # read once: every frame runs them all

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._session is not None
        names = self._output_names
        return dict(zip(names, self._session.run(names, feeds)))

    def _close(self) -> None:
        self._session = None

    def _meta(self, items) -> list[TensorMeta]:
        return [TensorMeta(i.name, tuple(i.shape), _DTYPES.get(i.type, i.type)) for i in items]

    def input_metadata(self) -> list[TensorMeta]:
        assert self._session is not None, "load() first"
        return self._meta(self._session.get_inputs())

    def output_metadata(self) -> list[TensorMeta]:
        assert self._session is not None, "load() first"
        return self._meta(self._session.get_outputs())

    def describe(self) -> dict:
        return {"backend": self.backend, "model": str(self.model_path),
                "requested_providers": [p[0] if isinstance(p, tuple) else p for p in self.requested],
                "active_providers": self.active_providers,
                "missing_providers": [p[0] if isinstance(p, tuple) else p for p in self.requested
                                      if (p[0] if isinstance(p, tuple) else p) not in self.active_providers],
                "threads": self.threads,
                "session_config": {k: self._session.get_session_options().get_session_config_entry(k)
                                   for k in self.session_config} if self._session is not None else {}}
