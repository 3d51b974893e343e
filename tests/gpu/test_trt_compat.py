"""trt_compat's version switches, checked on the CPU against fake `tensorrt` modules that
have exactly the API surface of TensorRT 8.5 (JetPack 5) and 10.x. (The real thing runs in
tests/gpu/test_tensorrt.py where TensorRT exists.)"""

import types

import pytest

np = pytest.importorskip("numpy", reason="numpy comes with requirements/ml.txt (make install)")

from edgetune_jobs.inference import trt_compat  # noqa: E402


def fake_trt(version: str, *, explicit_batch_flag=True, pools=True):
    flags = types.SimpleNamespace(**({"EXPLICIT_BATCH": 0} if explicit_batch_flag else {}))
    mod = types.SimpleNamespace(__version__=version, NetworkDefinitionCreationFlag=flags)
    if pools:
        mod.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    mod.TensorIOMode = types.SimpleNamespace(INPUT="IN", OUTPUT="OUT")
    mod.nptype = lambda dt: {"f32": np.float32, "i32": np.int32}[dt]
    return mod


def test_network_flags_per_version():
    assert trt_compat.network_flags(fake_trt("8.5.2.2")) == 1
    assert trt_compat.network_flags(fake_trt("8.6.1")) == 1
    assert trt_compat.network_flags(fake_trt("10.3.0")) == 0
    assert trt_compat.network_flags(fake_trt("10.8.0", explicit_batch_flag=False)) == 0


def test_workspace_pool_api_and_legacy_attribute():
    class Config85:
        def __init__(self):
            self.pools = {}

        def set_memory_pool_limit(self, pool, n):
            self.pools[pool] = n

    cfg = Config85()
    trt_compat.set_workspace(cfg, 1 << 30, fake_trt("8.5.2"))
    assert cfg.pools == {"WORKSPACE": 1 << 30}

    class Config80:
        max_workspace_size = 0

    old = Config80()
    trt_compat.set_workspace(old, 256 << 20, fake_trt("8.0.1", pools=False))
    assert old.max_workspace_size == 256 << 20


def test_build_serialized_prefers_serialized_network():
    class Builder:
        def build_serialized_network(self, network, config):
            return memoryview(b"plan")

    assert trt_compat.build_serialized(Builder(), None, None) == b"plan"

    class Failing:
        def build_serialized_network(self, network, config):
            return None

    with pytest.raises(RuntimeError, match="could not build"):
        trt_compat.build_serialized(Failing(), None, None)


class Engine10:
    """TensorRT 10: tensor names only."""
    num_io_tensors = 2
    _t = [("input", "IN", (1, 64, 64, 3), "f32"), ("num_detections", "OUT", (1, 1), "i32")]

    def get_tensor_name(self, i):
        return self._t[i][0]

    def get_tensor_mode(self, name):
        return dict((t[0], t[1]) for t in self._t)[name]

    def get_tensor_shape(self, name):
        return dict((t[0], t[2]) for t in self._t)[name]

    def get_tensor_dtype(self, name):
        return dict((t[0], t[3]) for t in self._t)[name]


class Engine84:
    """TensorRT <= 8.4: bindings only."""
    num_bindings = 2
    _b = Engine10._t

    def get_binding_name(self, i):
        return self._b[i][0]

    def binding_is_input(self, i):
        return self._b[i][1] == "IN"

    def get_binding_shape(self, i):
        return self._b[i][2]

    def get_binding_dtype(self, i):
        return self._b[i][3]


@pytest.mark.parametrize("engine", [Engine10(), Engine84()], ids=["tensor-names", "bindings"])
def test_engine_io_both_apis(engine):
    specs = trt_compat.engine_io(engine, fake_trt("10.3.0"))
    assert [(s.name, s.is_input, s.shape, s.dtype, s.index) for s in specs] == [
        ("input", True, (1, 64, 64, 3), np.dtype(np.float32), 0),
        ("num_detections", False, (1, 1), np.dtype(np.int32), 1)]


def test_execution_api_choice(monkeypatch):
    class Ctx85:  # has both
        def execute_async_v2(self, *a):
            pass

        def execute_async_v3(self, *a):
            pass

        def set_tensor_address(self, *a):
            pass

    class Ctx84:
        def execute_async_v2(self, *a):
            pass

    class Ctx10:
        def execute_async_v3(self, *a):
            pass

        def set_tensor_address(self, *a):
            pass

    monkeypatch.delenv("EDGETUNE_TRT_API", raising=False)
    assert trt_compat.use_tensor_api(Ctx85()) is True
    assert trt_compat.use_tensor_api(Ctx84()) is False
    assert trt_compat.use_tensor_api(Ctx10()) is True
    monkeypatch.setenv("EDGETUNE_TRT_API", "bindings")
    assert trt_compat.use_tensor_api(Ctx85()) is False
    with pytest.raises(trt_compat.TensorRTUnavailable):
        trt_compat.use_tensor_api(Ctx10())
    monkeypatch.setenv("EDGETUNE_TRT_API", "tensors")
    with pytest.raises(trt_compat.TensorRTUnavailable):
        trt_compat.use_tensor_api(Ctx84())


def test_version_tuple():
    assert trt_compat.version_tuple("8.5.2.2") == (8, 5, 2, 2)
    assert trt_compat.version_tuple("10.0.1b") == (10, 0, 1)


def test_import_without_tensorrt_says_why(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_trt(name, *a, **k):
        if name == "tensorrt":
            raise ImportError("No module named 'tensorrt'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_trt)
    with pytest.raises(trt_compat.TensorRTUnavailable, match="target device"):
        trt_compat.import_tensorrt()
