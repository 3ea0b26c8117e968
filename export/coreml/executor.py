"""Reference executor: evaluate a saved Core ML package with numpy, op by op, checking every op's output shape.

The package is loaded back with coremltools' own milproto loader, so what is checked is what was written to disk,
after all of coremltools' graph passes (fusions, FP16 casts, image preprocessing). FP16 ops are computed in float32
and rounded to float16 after every op, as FP16 storage with wider accumulation does on the device.

A package is one ML Program, or a pipeline of stages (a detector: network, decoding, NonMaximumSuppression); every
stage is evaluated, the ML Programs op by op (`mil_ops`), the NMS model by its documented semantics (`nms`).

Written here on purpose, not taken from a library: Core ML itself (coremltools' `predict`) runs only on macOS, and
no other library evaluates an ML Program, so this is the only way to check a package's outputs on the Linux
machines that export it. On macOS, runtime/runners/coreml.py runs a package with the real Core ML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.coreml.mil_ops import NUMPY_TYPES, OPS
from export.coreml.nms import NmsParams, run_nms
from runtime.errors import ConversionError
from runtime.runners.coreml import coremltools_quiet, import_coremltools

WEIGHTS = "Data/com.apple.CoreML/weights"


class ExecutorError(ConversionError):
    """The program contains an op the executor cannot evaluate, or an op's output disagrees with its declared
    shape: either way the package is not verified."""

    exit_code = 22


@dataclass
class Stage:
    """One model of a package: an ML Program (`program` set) or a NonMaximumSuppression model (`nms` set)."""

    spec: Any
    program: Any = None
    nms: NmsParams | None = None

    @property
    def kind(self) -> str:
        return "program" if self.program is not None else "nms"

    @property
    def input_names(self) -> list[str]:
        return [f.name for f in self.spec.description.input]

    @property
    def output_names(self) -> list[str]:
        return [f.name for f in self.spec.description.output]


@dataclass
class Package:
    """A saved package read back from disk: its top-level spec and its stages in pipeline order."""

    spec: Any
    stages: list[Stage] = field(default_factory=list)

    @property
    def is_pipeline(self) -> bool:
        return self.spec.WhichOneof("Type") == "pipeline"

    @property
    def stage_names(self) -> list[str]:
        """network, then decoding for any further ML Program, nms for the NMS model."""
        return ["network" if i == 0 else "decoding" if s.kind == "program" else "nms"
                for i, s in enumerate(self.stages)]

    @property
    def network(self) -> Stage:
        """The first stage: the converted network, whose input is the image."""
        return self.stages[0]


def load_package(package: Path) -> Package:
    """Read a .mlpackage back from disk: the spec, and every stage's ML Program or NMS parameters."""
    from coremltools.converters.mil.frontend.milproto.load import load

    ct = import_coremltools()
    package = Path(package)
    with coremltools_quiet():
        spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
    kind = spec.WhichOneof("Type")
    specs = list(spec.pipeline.models) if kind == "pipeline" else [spec]
    stages = []
    for sub in specs:
        sub_kind = sub.WhichOneof("Type")
        if sub_kind == "mlProgram":
            # pipeline stages name their weight files "{i}-weight.bin"; the loader resolves them in this folder
            with coremltools_quiet():
                prog = load(sub, spec.specificationVersion, file_weights_dir=str(package / WEIGHTS))
            stages.append(Stage(sub, program=prog))
        elif sub_kind == "nonMaximumSuppression":
            stages.append(Stage(sub, nms=NmsParams.from_spec(sub)))
        else:
            raise ExecutorError(f"{package}: a {sub_kind!r} model cannot be evaluated by the reference executor")
    if not stages or stages[0].program is None:
        raise ExecutorError(f"{package}: the first model of the package is not an ML Program")
    return Package(spec, stages)


def load_program(package: Path) -> tuple[Any, Any]:
    """(spec, ML Program of the network) of a saved .mlpackage."""
    loaded = load_package(package)
    return loaded.spec, loaded.network.program


def dtype_name(var) -> str:
    from coremltools.converters.mil.mil import types

    t = var.dtype
    if types.is_tensor(var.sym_type) or types.is_scalar(var.sym_type):
        return types.builtin_to_string(t)
    return "other"


class Executor:
    """Runs the "main" function of a MIL program on numpy inputs."""

    def __init__(self, prog) -> None:
        self.fn = prog.functions["main"]
        for o in self.fn.operations:
            if o.op_type not in OPS:
                raise ExecutorError(f"the reference executor cannot evaluate op {o.op_type!r} ({o.name}); the "
                                    "package cannot be verified")

    @property
    def input_names(self) -> list[str]:
        return list(self.fn.inputs)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
        """Every var's value by name (inputs, intermediates, outputs)."""
        values: dict[str, Any] = {}
        symbols: dict[Any, int] = {}
        for name, var in self.fn.inputs.items():
            if name not in feeds:
                raise ExecutorError(f"missing input {name!r}")
            values[name] = self._store(var, np.asarray(feeds[name]), symbols, "input")
        for o in self.fn.operations:
            args = {k: self._value(v, values) for k, v in o.inputs.items()}
            try:
                result = OPS[o.op_type](o, **args)
            except ExecutorError:
                raise
            except (ValueError, IndexError, TypeError, KeyError) as err:
                raise ExecutorError(f"op {o.op_type} ({o.name}) failed in the executor: {err}") from err
            results = result if isinstance(result, tuple) else (result,)
            if len(results) != len(o.outputs):
                raise ExecutorError(f"op {o.op_type} ({o.name}): {len(results)} results for {len(o.outputs)} outputs")
            for var, val in zip(o.outputs, results):
                values[var.name] = self._store(var, val, symbols, f"{o.op_type} ({o.name})")
        return values

    def outputs(self, values: dict[str, Any]) -> dict[str, Any]:
        return {v.name: values[v.name] for v in self.fn.outputs}

    @staticmethod
    def _value(v, values: dict[str, Any]) -> Any:
        if isinstance(v, (list, tuple)):
            return [values[x.name] for x in v]
        return values[v.name]

    @staticmethod
    def _store(var, val: Any, symbols: dict[Any, int], where: str) -> Any:
        from coremltools.converters.mil.mil import types

        if not (types.is_tensor(var.sym_type) or types.is_scalar(var.sym_type)) or types.is_str(var.sym_type):
            return val  # classify's label and dictionary: checked by the description checks
        arr = np.asarray(val)
        want = tuple(var.shape)
        if len(want) != arr.ndim:
            raise ExecutorError(f"{where}: output {var.name!r} has shape {arr.shape}, the program declares {want}")
        for have, dim in zip(arr.shape, want):
            if isinstance(dim, (int, np.integer)):
                if int(dim) != have:
                    raise ExecutorError(f"{where}: output {var.name!r} has shape {arr.shape}, the program declares "
                                        f"{want}")
            elif symbols.setdefault(dim, have) != have:
                raise ExecutorError(f"{where}: output {var.name!r} dimension {dim} is {have}, bound to "
                                    f"{symbols[dim]} earlier")
        np_type = NUMPY_TYPES.get(dtype_name(var))
        return arr.astype(np_type) if np_type is not None and arr.dtype != np_type else arr


class PackageExecutor:
    """Evaluates every stage of a package in order; each stage reads its inputs by name from what the package's
    inputs and the earlier stages produced (as a Core ML pipeline wires them)."""

    def __init__(self, package: Package) -> None:
        self.package = package
        self.executors: list[Executor | None] = [Executor(s.program) if s.program is not None else None
                                                 for s in package.stages]

    def run(self, feeds: dict[str, Any], until: int | None = None) -> list[dict[str, Any]]:
        """Each stage's values (a program's every var; an NMS model's outputs), up to stage `until` (exclusive)."""
        available: dict[str, Any] = dict(feeds)
        per_stage: list[dict[str, Any]] = []
        for stage, executor in list(zip(self.package.stages, self.executors))[:until]:
            if executor is not None:
                missing = [n for n in executor.input_names if n not in available]
                if missing:
                    raise ExecutorError(f"stage inputs {missing} are produced by no earlier stage")
                values = executor.run({n: available[n] for n in executor.input_names})
                outputs = executor.outputs(values)
            else:
                assert stage.nms is not None
                try:
                    values = outputs = run_nms(stage.nms, available)
                except (ValueError, KeyError) as err:
                    raise ExecutorError(f"NMS stage failed in the executor: {err}") from err
            per_stage.append(values)
            available.update(outputs)
        return per_stage
