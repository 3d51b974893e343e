"""CUDA memory and streams for the TensorRT runner: pycuda (the Jetson image's choice) or, if
absent, cuda-python, behind one small interface (host/alloc/copies/synchronize/device_name).
Importing this module needs neither; cuda_api() imports them when called."""

from __future__ import annotations

import numpy as np



class TensorRTUnavailable(RuntimeError):
    """TensorRT, or a CUDA binding for it, is not usable here."""


class _PyCuda:
    name = "pycuda"

    def __init__(self) -> None:
        import pycuda.autoinit  # noqa: F401 - creates the context on device 0
        import pycuda.driver as cuda
        self.cuda = cuda
        self.stream = cuda.Stream()

    def device_name(self) -> str:
        return self.cuda.Device(0).name()

    def host(self, shape, dtype) -> np.ndarray:
        return self.cuda.pagelocked_empty(tuple(shape), np.dtype(dtype))

    def alloc(self, nbytes: int):
        return self.cuda.mem_alloc(max(1, int(nbytes)))

    def ptr(self, dmem) -> int:
        return int(dmem)

    def htod(self, dmem, host: np.ndarray) -> None:
        self.cuda.memcpy_htod_async(dmem, host, self.stream)

    def dtoh(self, host: np.ndarray, dmem) -> None:
        self.cuda.memcpy_dtoh_async(host, dmem, self.stream)

    def stream_handle(self) -> int:
        return self.stream.handle

    def sync(self) -> None:
        self.stream.synchronize()

    def event(self):
        return self.cuda.Event()

    def record(self, ev) -> None:
        ev.record(self.stream)

    def elapsed_ms(self, start, end) -> float:
        end.synchronize()
        return float(end.time_since(start))


class _CudaPython:
    name = "cuda-python"

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # older cuda-python
        self.rt = cudart
        self.stream = self._check(cudart.cudaStreamCreate())

    def _check(self, res):
        err, *rest = res if isinstance(res, tuple) else (res,)
        if int(err) != 0:
            raise RuntimeError(f"CUDA runtime error {err}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def device_name(self) -> str:
        props = self._check(self.rt.cudaGetDeviceProperties(0))
        name = props.name
        return name.split(b"\0", 1)[0].decode() if isinstance(name, bytes) else str(name)

    def host(self, shape, dtype) -> np.ndarray:
        return np.empty(tuple(shape), np.dtype(dtype))  # pageable; fine for a fallback

    def alloc(self, nbytes: int):
        return self._check(self.rt.cudaMalloc(max(1, int(nbytes))))

    def ptr(self, dmem) -> int:
        return int(dmem)

    def htod(self, dmem, host: np.ndarray) -> None:
        self._check(self.rt.cudaMemcpyAsync(dmem, host.ctypes.data, host.nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))

    def dtoh(self, host: np.ndarray, dmem) -> None:
        self._check(self.rt.cudaMemcpyAsync(host.ctypes.data, dmem, host.nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))

    def stream_handle(self) -> int:
        return int(self.stream)

    def sync(self) -> None:
        self._check(self.rt.cudaStreamSynchronize(self.stream))

    def event(self):
        return self._check(self.rt.cudaEventCreate())

    def record(self, ev) -> None:
        self._check(self.rt.cudaEventRecord(ev, self.stream))

    def elapsed_ms(self, start, end) -> float:
        self._check(self.rt.cudaEventSynchronize(end))
        return float(self._check(self.rt.cudaEventElapsedTime(start, end)))


def cuda_api():
    errors = []
    for cls in (_PyCuda, _CudaPython):
        try:
            return cls()
        except Exception as exc:  # noqa: BLE001 - try the next binding
            errors.append(f"{cls.name}: {exc}")
    raise TensorRTUnavailable("no usable CUDA binding: " + "; ".join(errors))
