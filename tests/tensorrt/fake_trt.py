"""A stand-in for the `tensorrt` and `pycuda.driver` modules, for unit tests on machines without a GPU.

TensorRT and pycuda are among the few things the project may mock (no GPU here). The stand-in exposes the names and
signatures of the real TensorRT 10.x / 11.x Python API that Shadowline calls, records every call in `calls`, and
enforces the rules the real library enforces where a mistake would otherwise pass silently: BuilderFlag.FP16,
INT8 and BF16 do not exist on 11.x, a precision flag on a strongly typed network is a build error, input shapes
outside the optimisation profile are refused, an engine from another TensorRT version does not deserialize, a
timing cache from another device is refused. Execution runs the ONNX the "engine" was built from with ONNX Runtime
on the CPU, through the fake device memory, so the runner's copies, shapes and bindings are exercised for real.
Nothing here says anything about TensorRT's own numerics: the `gpu` tests do that on a device.
"""

from __future__ import annotations

import enum
import json
import types
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"FAKETRT1"


class HostMemory:
    """IHostMemory: a buffer; `bytes(mem)` gives its contents."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __bytes__(self) -> bytes:
        return self._data

    @property
    def nbytes(self) -> int:
        return len(self._data)


def make_tensorrt(version: str = "10.3.0.26", device_tag: str = "sm87") -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    major = int(version.split(".")[0])
    calls: list[tuple] = []
    trt.calls = calls
    trt.corrupt = None  # set to a function(outputs) -> outputs to plant a numeric bug in the "engine"
    trt.build_count = 0
    trt.phases = [("Building engine", None, 3), ("Tactic selection", "Building engine", 4)]

    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    class ILogger:
        def __init__(self) -> None:
            pass

        def log(self, severity: Any, msg: str) -> None:  # overridden by users
            pass

    ILogger.Severity = Severity

    class Logger(ILogger):
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = (Severity.INTERNAL_ERROR, Severity.ERROR, Severity.WARNING,
                                                         Severity.INFO, Severity.VERBOSE)

        def __init__(self, min_severity: Any = Severity.WARNING) -> None:
            super().__init__()
            self.min_severity = min_severity

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    flags = {"STRONGLY_TYPED": 1, "PREFER_AOT_PYTHON_PLUGINS": 2, "PREFER_JIT_PYTHON_PLUGINS": 3}
    if major < 11:
        flags["EXPLICIT_BATCH"] = 0
    NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", flags)
    builder_flags = ["TF32", "DEBUG", "GPU_FALLBACK", "REFIT", "SPARSE_WEIGHTS", "STRIP_PLAN"]
    if major < 11:
        builder_flags += ["FP16", "INT8", "BF16", "FP8", "OBEY_PRECISION_CONSTRAINTS"]
    BuilderFlag = enum.IntEnum("BuilderFlag", builder_flags)
    MemoryPoolType = enum.IntEnum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM", "TACTIC_SHARED_MEMORY"])
    TensorIOMode = enum.IntEnum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    DataType = enum.IntEnum("DataType", ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "INT64"])
    np_of = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
             DataType.INT32: np.int32, DataType.BOOL: np.bool_, DataType.INT64: np.int64}
    dt_of = {"tensor(float)": DataType.FLOAT, "tensor(float16)": DataType.HALF, "tensor(int64)": DataType.INT64,
             "tensor(int32)": DataType.INT32}

    def nptype(dt: Any) -> Any:
        return np_of[dt]

    class Tensor:
        def __init__(self, name: str, shape: tuple[int, ...], dtype: Any) -> None:
            self.name, self.shape, self.dtype = name, shape, dtype

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.inputs: list[Tensor] = []
            self.outputs: list[Tensor] = []
            self.onnx: bytes | None = None

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        @property
        def num_outputs(self) -> int:
            return len(self.outputs)

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

        def get_output(self, i: int) -> Tensor:
            return self.outputs[i]

    class ParserError:
        def __init__(self, desc: str, node: int = -1, name: str = "", op: str = "") -> None:
            self._desc, self._node, self._name, self._op = desc, node, name, op

        def desc(self) -> str:
            return self._desc

        def node(self) -> int:
            return self._node

        def node_name(self) -> str:
            return self._name

        def node_operator(self) -> str:
            return self._op

        def code(self) -> int:
            return 1

    class OnnxParser:
        unsupported: set[str] = set()

        def __init__(self, network: Network, logger: Any) -> None:
            self.network, self.logger, self.errors = network, logger, []

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> ParserError:
            return self.errors[i]

        def parse_from_file(self, path: str) -> bool:
            calls.append(("parse_from_file", Path(path).name))
            import onnx
            import onnxruntime as ort

            try:
                model = onnx.load(path)
            except Exception as err:
                self.errors.append(ParserError(f"failed to parse ONNX: {err}"))
                return False
            for i, node in enumerate(model.graph.node):
                if node.op_type in OnnxParser.unsupported:
                    self.errors.append(ParserError(f"no importer registered for op: {node.op_type}", i, node.name,
                                                   node.op_type))
                    return False
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            dim = lambda d: d if isinstance(d, int) and d > 0 else -1  # noqa: E731
            self.network.inputs = [Tensor(i.name, tuple(dim(d) for d in i.shape), dt_of[i.type])
                                   for i in sess.get_inputs()]
            self.network.outputs = [Tensor(o.name, tuple(dim(d) for d in o.shape), dt_of[o.type])
                                    for o in sess.get_outputs()]
            self.network.onnx = Path(path).read_bytes()
            return True

    class OptimizationProfile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - TensorRT's names
            calls.append(("set_shape", name, tuple(min), tuple(opt), tuple(max)))
            self.shapes[name] = (tuple(min), tuple(opt), tuple(max))

    class TimingCache:
        def __init__(self, entries: set[str], device: str) -> None:
            self.entries, self.device = set(entries), device

        def serialize(self) -> HostMemory:
            return HostMemory(json.dumps({"device": self.device, "entries": sorted(self.entries)}).encode())

        def combine(self, other: TimingCache, ignore_mismatch: bool) -> bool:
            calls.append(("timing_cache.combine", ignore_mismatch))
            if other.device != self.device and not ignore_mismatch:
                return False
            self.entries |= other.entries
            return True

    class BuilderConfig:
        def __init__(self) -> None:
            self.pools: dict[Any, int] = {}
            self.flags: set[Any] = {BuilderFlag.TF32}  # TF32 is on by default in TensorRT
            self.profiles: list[OptimizationProfile] = []
            self.timing_cache: TimingCache | None = None
            self.progress_monitor: Any = None
            self.builder_optimization_level = 3

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            calls.append(("set_memory_pool_limit", pool.name, size))
            self.pools[pool] = size

        def set_flag(self, flag: Any) -> None:
            calls.append(("set_flag", flag.name))
            self.flags.add(flag)

        def clear_flag(self, flag: Any) -> None:
            calls.append(("clear_flag", flag.name))
            self.flags.discard(flag)

        def get_flag(self, flag: Any) -> bool:
            return flag in self.flags

        def add_optimization_profile(self, profile: OptimizationProfile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, data: bytes) -> TimingCache:
            calls.append(("create_timing_cache", len(data)))
            if not data:
                return TimingCache(set(), device_tag)
            d = json.loads(bytes(data))
            return TimingCache(set(d["entries"]), d["device"])

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            calls.append(("set_timing_cache", ignore_mismatch))
            if cache.device != device_tag and not ignore_mismatch:
                return False
            self.timing_cache = cache
            return True

        def get_timing_cache(self) -> TimingCache | None:
            return self.timing_cache

    class Builder:
        def __init__(self, logger: Any) -> None:
            self.logger = logger

        def create_network(self, flags: int = 0) -> Network:
            calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self) -> BuilderConfig:
            return BuilderConfig()

        def create_optimization_profile(self) -> OptimizationProfile:
            return OptimizationProfile()

        def build_serialized_network(self, network: Network, config: BuilderConfig) -> HostMemory | None:
            calls.append(("build_serialized_network",))
            strongly = bool(network.flags & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED))) or major >= 11
            precision_flags = [f.name for f in config.flags if f.name in ("FP16", "INT8", "BF16", "FP8")]
            if strongly and precision_flags:
                self.logger.log(Severity.ERROR, f"BuilderFlag::k{precision_flags[0]} is not allowed with a strongly "
                                "typed network")
                return None
            dynamic = [t for t in network.inputs if any(d < 0 for d in t.shape)]
            for t in dynamic:
                if not any(t.name in p.shapes for p in config.profiles):
                    self.logger.log(Severity.ERROR, f"Network has dynamic or shape inputs, but no optimization "
                                    f"profile has been defined for {t.name}")
                    return None
            monitor = config.progress_monitor
            if monitor is not None:
                for name, parent, steps in trt.phases:
                    monitor.phase_start(name, parent, steps)
                for name, _parent, steps in reversed(trt.phases):
                    for s in range(steps):
                        if not monitor.step_complete(name, s):
                            self.logger.log(Severity.ERROR, "Build cancelled by the progress monitor")
                            return None
                    monitor.phase_finish(name)
            if config.timing_cache is not None:
                import hashlib

                config.timing_cache.entries.add("tactics:" + hashlib.sha256(network.onnx or b"").hexdigest()[:16])
            trt.build_count += 1
            profile = {n: [list(s) for s in shp] for p in config.profiles[:1] for n, shp in p.shapes.items()}
            header = {"version": version, "device": device_tag, "fp16": "FP16" in {f.name for f in config.flags},
                      "tf32": "TF32" in {f.name for f in config.flags}, "strongly_typed": strongly,
                      "profile": profile, "workspace": config.pools.get(MemoryPoolType.WORKSPACE)}
            head = json.dumps(header).encode()
            return HostMemory(MAGIC + len(head).to_bytes(4, "little") + head + (network.onnx or b""))

    class Engine:
        def __init__(self, header: dict, onnx_bytes: bytes) -> None:
            import onnxruntime as ort

            self.header = header
            self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
            dim = lambda d: d if isinstance(d, int) and d > 0 else -1  # noqa: E731
            self.io = [(i.name, TensorIOMode.INPUT, tuple(dim(d) for d in i.shape), dt_of[i.type])
                       for i in self.session.get_inputs()]
            self.io += [(o.name, TensorIOMode.OUTPUT, tuple(dim(d) for d in o.shape), dt_of[o.type])
                        for o in self.session.get_outputs()]

        @property
        def num_io_tensors(self) -> int:
            return len(self.io)

        def _find(self, name: str) -> tuple:
            return next(t for t in self.io if t[0] == name)

        def get_tensor_name(self, i: int) -> str:
            return self.io[i][0]

        def get_tensor_mode(self, name: str) -> Any:
            return self._find(name)[1]

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return self._find(name)[2]

        def get_tensor_dtype(self, name: str) -> Any:
            return self._find(name)[3]

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
            shapes = self.header["profile"].get(name)
            if shapes is None:
                raise RuntimeError(f"no profile shape for {name}")
            return [tuple(s) for s in shapes]

        def create_execution_context(self) -> Context:
            return Context(self)

    class Context:
        def __init__(self, engine: Engine) -> None:
            self.engine = engine
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: Any) -> bool:
            shape = tuple(int(d) for d in shape)
            calls.append(("set_input_shape", name, shape))
            full = self.engine.get_tensor_shape(name)
            prof = self.engine.header["profile"].get(name)
            lo, hi = (prof[0], prof[2]) if prof else (full, full)
            if len(shape) != len(full) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi)):
                return False
            self.shapes[name] = shape
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            mode = self.engine.get_tensor_mode(name)
            if mode == TensorIOMode.INPUT:
                return self.shapes.get(name, self.engine.get_tensor_shape(name))
            batch = next(iter(self.shapes.values()))[0] if self.shapes else 1
            return tuple(batch if d < 0 else d for d in self.engine.get_tensor_shape(name))

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            calls.append(("set_tensor_address", name))
            self.addresses[name] = int(ptr)
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            calls.append(("execute_async_v3", stream_handle))
            feeds = {}
            for name, mode, _shape, dt in self.engine.io:
                if mode == TensorIOMode.INPUT:
                    shape = self.shapes[name]
                    n = int(np.prod(shape))
                    buf = _MEMORY[self.addresses[name]]
                    feeds[name] = buf.view(np_of[dt])[:n].reshape(shape).copy()
            outs = dict(zip([o.name for o in self.engine.session.get_outputs()], self.engine.session.run(None, feeds)))
            if trt.corrupt is not None:
                outs = trt.corrupt(outs)
            for name, value in outs.items():
                raw = np.ascontiguousarray(value).view(np.uint8).reshape(-1)
                _MEMORY[self.addresses[name]][: raw.size] = raw
            return True

    class Runtime:
        def __init__(self, logger: Any) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            data = bytes(data)
            calls.append(("deserialize_cuda_engine", len(data)))
            if not data.startswith(MAGIC):
                self.logger.log(Severity.ERROR, "Serialization assertion magicTagRead == kMAGIC_TAG failed")
                return None
            n = int.from_bytes(data[8:12], "little")
            header = json.loads(data[12 : 12 + n])
            if header["version"].split(".")[:2] != version.split(".")[:2] or header["device"] != device_tag:
                self.logger.log(Severity.ERROR, "The engine plan file is not compatible with this version of "
                                "TensorRT or this GPU")
                return None
            return Engine(header, data[12 + n :])

    for name, value in dict(ILogger=ILogger, Logger=Logger, IProgressMonitor=IProgressMonitor,
                            NetworkDefinitionCreationFlag=NetworkDefinitionCreationFlag, BuilderFlag=BuilderFlag,
                            MemoryPoolType=MemoryPoolType, TensorIOMode=TensorIOMode, DataType=DataType,
                            nptype=nptype, Builder=Builder, OnnxParser=OnnxParser, Runtime=Runtime).items():
        setattr(trt, name, value)
    return trt


# -- pycuda.driver ---------------------------------------------------------------------------------------------------
_MEMORY: dict[int, np.ndarray] = {}


def make_pycuda(compute_capability: tuple[int, int] = (8, 7), name: str = "Orin (fake)",
                driver_version: int = 12060) -> tuple[types.ModuleType, types.ModuleType]:
    pkg = types.ModuleType("pycuda")
    drv = types.ModuleType("pycuda.driver")
    pkg.driver = drv
    state = {"next": 0x10000, "stack": [], "retained": 0, "freed": 0, "allocated": 0, "inited": False}
    drv.state = state

    class LogicError(RuntimeError):
        pass

    def init() -> None:
        state["inited"] = True

    class Context:
        def push(self) -> None:
            state["stack"].append(self)

        @staticmethod
        def pop() -> None:
            state["stack"].pop()

        def detach(self) -> None:
            state["retained"] -= 1

    class Device:
        def __init__(self, ordinal: int) -> None:
            if not state["inited"]:
                raise LogicError("cuInit has not been called")
            if ordinal != 0:
                raise LogicError(f"cuDeviceGet failed: invalid device ordinal {ordinal}")

        def compute_capability(self) -> tuple[int, int]:
            return compute_capability

        def name(self) -> str:
            return name

        def retain_primary_context(self) -> Context:
            state["retained"] += 1
            return Context()

    class DeviceAllocation:
        def __init__(self, nbytes: int) -> None:
            self.ptr = state["next"]
            state["next"] += nbytes + 256
            _MEMORY[self.ptr] = np.zeros(nbytes, dtype=np.uint8)
            state["allocated"] += 1

        def __int__(self) -> int:
            return self.ptr

        def free(self) -> None:
            _MEMORY.pop(self.ptr, None)
            state["freed"] += 1

    def _need_context() -> None:
        if not state["stack"]:
            raise LogicError("invalid device context - no currently active context?")

    def mem_alloc(nbytes: int) -> DeviceAllocation:
        _need_context()
        return DeviceAllocation(int(nbytes))

    def pagelocked_empty(shape: Any, dtype: Any) -> np.ndarray:
        return np.empty(shape, dtype=dtype)

    class Stream:
        def __init__(self) -> None:
            _need_context()
            self.handle = 0xBEEF
            self.synchronized = 0

        def synchronize(self) -> None:
            self.synchronized += 1

    def memcpy_htod_async(dest: DeviceAllocation, src: np.ndarray, stream: Stream | None = None) -> None:
        _need_context()
        raw = np.ascontiguousarray(src).view(np.uint8).reshape(-1)
        _MEMORY[int(dest)][: raw.size] = raw

    def memcpy_dtoh_async(dest: np.ndarray, src: DeviceAllocation, stream: Stream | None = None) -> None:
        _need_context()
        view = dest.view(np.uint8).reshape(-1)
        view[...] = _MEMORY[int(src)][: view.size]

    def get_driver_version() -> int:
        return driver_version

    for k, v in dict(LogicError=LogicError, init=init, Context=Context, Device=Device, mem_alloc=mem_alloc,
                     pagelocked_empty=pagelocked_empty, Stream=Stream, memcpy_htod_async=memcpy_htod_async,
                     memcpy_dtoh_async=memcpy_dtoh_async, get_driver_version=get_driver_version).items():
        setattr(drv, k, v)
    return pkg, drv


def install(monkeypatch: Any, version: str = "10.3.0.26", device_tag: str = "sm87",
            compute_capability: tuple[int, int] = (8, 7)) -> tuple[types.ModuleType, types.ModuleType]:
    """Put the stand-ins into sys.modules for one test (monkeypatch undoes it)."""
    import sys

    trt = make_tensorrt(version, device_tag)
    pkg, drv = make_pycuda(compute_capability)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "pycuda", pkg)
    monkeypatch.setitem(sys.modules, "pycuda.driver", drv)
    return trt, drv
