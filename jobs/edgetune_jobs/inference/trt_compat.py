"""TensorRT version differences, in one place (TensorRT 8.5 / JetPack 5 .. 10.x / JetPack 6).

| concern              | TensorRT 8.5 (JetPack 5)                       | TensorRT 10.x                         |
| -------------------- | ---------------------------------------------- | ------------------------------------- |
| network creation     | EXPLICIT_BATCH flag required                   | always explicit batch (flag deprecated)|
| workspace            | set_memory_pool_limit (max_workspace_size      | set_memory_pool_limit only            |
|                      | deprecated since 8.4, still there)             |                                       |
| build                | build_serialized_network (build_engine        | build_serialized_network only         |
|                      | deprecated)                                    |                                       |
| I/O description      | bindings (num_bindings, get_binding_*) and,    | tensor names only (num_io_tensors,    |
|                      | since 8.5, tensor names                        | get_tensor_name/mode/shape/dtype)     |
| execution            | execute_async_v2(bindings) (v3 since 8.5)      | execute_async_v3(stream) +            |
|                      |                                                | set_tensor_address                    |
| dynamic input shape  | set_binding_shape (set_input_shape since 8.5)  | set_input_shape                       |
| plugins              | init_libnvinfer_plugins: EfficientNMS_TRT      | same                                  |

Everything else in edgetune calls the functions below and never branches on the version.
`EDGETUNE_TRT_API=bindings|tensors` forces one execution API (to test both on 8.5/8.6).

CUDA memory comes from trt_cuda (pycuda, else cuda-python). Importing this module needs
neither TensorRT nor CUDA; the functions import them when called.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .trt_cuda import TensorRTUnavailable, cuda_api  # noqa: F401 - part of this module's API


def import_tensorrt():
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the image
        raise TensorRTUnavailable(
            f"the tensorrt Python package is not installed here ({exc}); TensorRT engines are "
            "built and run on the target device (images/jetson)") from None
    return trt


def version_tuple(version: str) -> tuple[int, ...]:
    out = []
    for part in version.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def trt_version() -> str:
    return import_tensorrt().__version__


# --- builder -----------------------------------------------------------------------------

def make_logger(verbose: bool = False):
    trt = import_tensorrt()
    return trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)


def init_plugins(logger) -> None:
    """Register the built-in plugins (EfficientNMS_TRT) with the plugin registry."""
    trt = import_tensorrt()
    trt.init_libnvinfer_plugins(logger, "")


def network_flags(trt_module=None) -> int:
    """EXPLICIT_BATCH on TensorRT < 10 (required there); 0 on 10.x (the only mode)."""
    trt = trt_module or import_tensorrt()
    major = version_tuple(trt.__version__)[0]
    flag = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if major < 10 and flag is not None:
        return 1 << int(flag)
    return 0


def set_workspace(config, nbytes: int, trt_module=None) -> None:
    trt = trt_module or import_tensorrt()
    if hasattr(config, "set_memory_pool_limit") and hasattr(trt, "MemoryPoolType"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(nbytes))
    else:  # TensorRT < 8.4
        config.max_workspace_size = int(nbytes)


def build_serialized(builder, network, config) -> bytes:
    if hasattr(builder, "build_serialized_network"):
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError("TensorRT could not build the engine (see the log above)")
        return bytes(plan)
    engine = builder.build_engine(network, config)  # TensorRT < 8.0
    if engine is None:
        raise RuntimeError("TensorRT could not build the engine (see the log above)")
    return bytes(engine.serialize())


def parse_onnx(parser, path: str) -> None:
    ok = parser.parse_from_file(path) if hasattr(parser, "parse_from_file") else \
        parser.parse(open(path, "rb").read())
    if not ok:
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError("TensorRT's ONNX parser failed: " + " | ".join(errors)[:1500])


@dataclass
class TensorSpec:
    name: str
    is_input: bool
    shape: tuple[int, ...]       # -1 for dynamic dims
    dtype: Any                   # numpy dtype
    index: int                   # binding index (bindings API) / I/O order


def network_inputs(network) -> list[tuple[str, tuple[int, ...]]]:
    return [(network.get_input(i).name, tuple(network.get_input(i).shape))
            for i in range(network.num_inputs)]


def engine_io(engine, trt_module=None) -> list[TensorSpec]:
    trt = trt_module or import_tensorrt()
    specs = []
    if hasattr(engine, "num_io_tensors"):
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            specs.append(TensorSpec(
                name=name,
                is_input=engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                shape=tuple(engine.get_tensor_shape(name)),
                dtype=np.dtype(trt.nptype(engine.get_tensor_dtype(name))),
                index=i))
    else:
        for i in range(engine.num_bindings):
            specs.append(TensorSpec(
                name=engine.get_binding_name(i), is_input=engine.binding_is_input(i),
                shape=tuple(engine.get_binding_shape(i)),
                dtype=np.dtype(trt.nptype(engine.get_binding_dtype(i))), index=i))
    return specs


def use_tensor_api(context) -> bool:
    forced = os.environ.get("EDGETUNE_TRT_API", "").strip().lower()
    has_v3 = hasattr(context, "execute_async_v3") and hasattr(context, "set_tensor_address")
    if forced == "bindings":
        if not hasattr(context, "execute_async_v2"):
            raise TensorRTUnavailable("EDGETUNE_TRT_API=bindings, but this TensorRT has no execute_async_v2")
        return False
    if forced == "tensors":
        if not has_v3:
            raise TensorRTUnavailable("EDGETUNE_TRT_API=tensors, but this TensorRT has no execute_async_v3")
        return True
    return has_v3


def set_input_shape(context, spec: TensorSpec, shape: Sequence[int], tensor_api: bool) -> None:
    if tensor_api or hasattr(context, "set_input_shape"):
        ok = context.set_input_shape(spec.name, tuple(shape))
    else:
        ok = context.set_binding_shape(spec.index, tuple(shape))
    if ok is False:
        raise ValueError(f"input shape {tuple(shape)} is outside the engine's profile for {spec.name}")


def context_shape(context, spec: TensorSpec, tensor_api: bool) -> tuple[int, ...]:
    if tensor_api or hasattr(context, "get_tensor_shape"):
        return tuple(context.get_tensor_shape(spec.name))
    return tuple(context.get_binding_shape(spec.index))


# --- engine build --------------------------------------------------------------------------

def make_entropy_calibrator(batches: Callable[[], Iterator[np.ndarray]], shape: Sequence[int],
                            dtype, cache_file: str, cuda) -> Any:
    """An IInt8EntropyCalibrator2 fed by `batches()` (arrays of `shape`, network input dtype)."""
    trt = import_tensorrt()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.count = 0
            self._it = batches()
            self._host = np.empty(tuple(shape), np.dtype(dtype))
            self._dev = cuda.alloc(self._host.nbytes)

        def get_batch_size(self) -> int:
            return int(shape[0])

        def get_batch(self, names, *args):  # noqa: ARG002 - TensorRT's signature
            try:
                batch = next(self._it)
            except StopIteration:
                return None
            np.copyto(self._host, batch.reshape(self._host.shape), casting="unsafe")
            cuda.htod(self._dev, self._host)
            cuda.sync()
            self.count += 1
            return [cuda.ptr(self._dev)]

        def read_calibration_cache(self):
            if cache_file and os.path.isfile(cache_file):
                with open(cache_file, "rb") as fh:
                    return fh.read()
            return None

        def write_calibration_cache(self, cache) -> None:
            if cache_file:
                with open(cache_file, "wb") as fh:
                    fh.write(bytes(cache))

    return EntropyCalibrator()


@dataclass
class BuildInfo:
    precision: str
    tensorrt: str
    seconds: float
    engine_bytes: int
    fp16_native: bool
    int8_native: bool
    calibration_batches: int = 0


def build_engine(onnx_path: str, *, precision: str, workspace_bytes: int,
                 profile: dict[str, tuple[Sequence[int], Sequence[int], Sequence[int]]] | None = None,
                 calibration: Callable[[], Iterator[np.ndarray]] | None = None,
                 calibration_cache: str = "", verbose: bool = False) -> tuple[bytes, BuildInfo]:
    """ONNX -> serialized engine. profile: input name -> (min, opt, max) shapes (dynamic)."""
    import time

    trt = import_tensorrt()
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"precision must be fp32, fp16 or int8, got {precision!r}")
    logger = make_logger(verbose)
    init_plugins(logger)
    t0 = time.monotonic()
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    parse_onnx(parser, onnx_path)
    config = builder.create_builder_config()
    set_workspace(config, workspace_bytes, trt)
    inputs = network_inputs(network)
    opt_profile = None
    if any(-1 in shape for _, shape in inputs):
        if not profile:
            raise ValueError(f"the ONNX has dynamic inputs {inputs}; an optimisation profile is needed")
        opt_profile = builder.create_optimization_profile()
        for name, (mn, opt, mx) in profile.items():
            opt_profile.set_shape(name, tuple(mn), tuple(opt), tuple(mx))
        config.add_optimization_profile(opt_profile)
    calib = None
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8 layers fall back to fp16, not fp32
    if precision == "int8":
        if calibration is None:
            raise ValueError("int8 needs calibration images")
        name, shape = inputs[0]
        if -1 in shape:
            shape = tuple(profile[name][1])
        dtype = trt.nptype(network.get_input(0).dtype)
        cuda = cuda_api()
        calib = make_entropy_calibrator(calibration, shape, dtype, calibration_cache, cuda)
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calib
        if opt_profile is not None and hasattr(config, "set_calibration_profile"):
            config.set_calibration_profile(opt_profile)
    plan = build_serialized(builder, network, config)
    info = BuildInfo(precision=precision, tensorrt=trt.__version__,
                     seconds=round(time.monotonic() - t0, 3), engine_bytes=len(plan),
                     fp16_native=bool(getattr(builder, "platform_has_fast_fp16", False)),
                     int8_native=bool(getattr(builder, "platform_has_fast_int8", False)),
                     calibration_batches=getattr(calib, "count", 0))
    return plan, info


# --- engine execution ----------------------------------------------------------------------

class TrtRunner:
    """A deserialized engine with preallocated device/host buffers for one input shape.

    run(host_input) copies the input in, executes, copies all outputs back, and returns
    (outputs by name, GPU milliseconds of the execution measured by CUDA events)."""

    def __init__(self, engine_path: str, input_shape: Sequence[int] | None = None) -> None:
        trt = import_tensorrt()
        self.trt = trt
        self.cuda = cuda_api()
        self.logger = make_logger()
        init_plugins(self.logger)
        self.runtime = trt.Runtime(self.logger)
        with open(engine_path, "rb") as fh:
            self.engine = self.runtime.deserialize_cuda_engine(fh.read())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {engine_path} (built with another "
                               f"TensorRT version or GPU? this is TensorRT {trt.__version__})")
        self.context = self.engine.create_execution_context()
        self.tensor_api = use_tensor_api(self.context)
        self.specs = engine_io(self.engine, trt)
        self.inputs = [s for s in self.specs if s.is_input]
        self.outputs = [s for s in self.specs if not s.is_input]
        if len(self.inputs) != 1:
            raise ValueError(f"expected one input tensor, the engine has {[s.name for s in self.inputs]}")
        inp = self.inputs[0]
        shape = tuple(input_shape) if input_shape is not None else inp.shape
        if -1 in shape:
            raise ValueError(f"input {inp.name} is dynamic {inp.shape}; give a concrete input_shape")
        set_input_shape(self.context, inp, shape, self.tensor_api)
        self.input_shape = shape
        self.host: dict[str, np.ndarray] = {}
        self.dev: dict[str, Any] = {}
        for s in self.specs:
            shp = shape if s.is_input else context_shape(self.context, s, self.tensor_api)
            self.host[s.name] = self.cuda.host(shp, s.dtype)
            self.dev[s.name] = self.cuda.alloc(self.host[s.name].nbytes)
            if self.tensor_api:
                self.context.set_tensor_address(s.name, self.cuda.ptr(self.dev[s.name]))
        self.bindings = [0] * len(self.specs)
        for s in self.specs:
            self.bindings[s.index] = self.cuda.ptr(self.dev[s.name])
        self._start, self._end = self.cuda.event(), self.cuda.event()

    @property
    def api(self) -> str:
        return "execute_async_v3" if self.tensor_api else "execute_async_v2"

    def run(self, x: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
        inp = self.inputs[0]
        host_in = self.host[inp.name]
        if x is not host_in:
            np.copyto(host_in, x.reshape(host_in.shape), casting="unsafe")
        self.cuda.htod(self.dev[inp.name], host_in)
        self.cuda.record(self._start)
        if self.tensor_api:
            ok = self.context.execute_async_v3(self.cuda.stream_handle())
        else:
            ok = self.context.execute_async_v2(self.bindings, self.cuda.stream_handle())
        self.cuda.record(self._end)
        if ok is False:
            raise RuntimeError("TensorRT execution failed")
        for s in self.outputs:
            self.cuda.dtoh(self.host[s.name], self.dev[s.name])
        self.cuda.sync()
        return {s.name: self.host[s.name] for s in self.outputs}, self.cuda.elapsed_ms(self._start, self._end)

    def input_buffer(self) -> np.ndarray:
        """The pinned host input buffer: preprocess straight into it to save a copy."""
        return self.host[self.inputs[0].name]
