"""mmcompat: mmengine checkpoints load with torch's weights-only unpickler, nothing else does."""

import pickle

import pytest

pytestmark = pytest.mark.ml

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")
pytest.importorskip("mmengine")


def _full_checkpoint(path):
    """What mmengine's CheckpointHook writes: meta, state_dict, message_hub (HistoryBuffers,
    numpy scalars and arrays), plus an optimizer state."""
    from mmengine.logging import MessageHub

    hub = MessageHub.get_instance("mmcompat-test")
    for i in range(3):
        hub.update_scalar("train/loss", 1.0 / (i + 1))
        hub.update_scalar("train/lr", np.float64(0.004))
    hub.update_info("epoch", 3)
    hub.update_info("best_score_coco/bbox_mAP", np.float64(0.5))
    hub.update_info("some_array", np.arange(3, dtype=np.float32))
    ckpt = {"meta": {"epoch": 3, "iter": 30, "seed": 0, "dataset_meta": {"classes": ("balloon",)},
                     "mmengine_version": "0.10.7"},
            "state_dict": {"w": torch.ones(2)},
            "message_hub": hub.state_dict(),
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.004, "params": [0]}]}}
    torch.save(ckpt, path)


def test_mmengine_checkpoint_loads_weights_only(tmp_path):
    from edgetune_jobs.inference.mmcompat import allow_mmengine_checkpoints

    path = tmp_path / "epoch_3.pth"
    _full_checkpoint(path)
    allow_mmengine_checkpoints()
    ckpt = torch.load(path, map_location="cpu")  # weights_only=True is torch's default
    buf = ckpt["message_hub"]["log_scalars"]["train/loss"]
    assert buf.mean() == pytest.approx((1 + 0.5 + 1 / 3) / 3)
    assert ckpt["message_hub"]["runtime_info"]["best_score_coco/bbox_mAP"] == 0.5
    # the registered names are the needed ones only
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    assert set(unsafe) <= {"builtins.getattr", "mmengine.logging.history_buffer.HistoryBuffer",
                           "numpy.ndarray", "numpy.dtype", "numpy._core.multiarray._reconstruct",
                           "numpy._core.multiarray.scalar"}


class _Evil:
    def __reduce__(self):
        from mmengine.logging.history_buffer import HistoryBuffer
        return (getattr, (HistoryBuffer, "__init__"))


class _Other:
    pass


def test_still_weights_only(tmp_path):
    from edgetune_jobs.inference.mmcompat import allow_mmengine_checkpoints

    allow_mmengine_checkpoints()
    torch.save({"x": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(pickle.UnpicklingError, match="only HistoryBuffer"):
        torch.load(tmp_path / "evil.pth")
    torch.save({"x": _Other()}, tmp_path / "other.pth")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(tmp_path / "other.pth")


def test_numpy1_names_are_mapped():
    from edgetune_jobs.inference import mmcompat

    names = {e[1] for e in mmcompat.safe_globals() if isinstance(e, tuple)}
    assert {"numpy.core.multiarray._reconstruct", "numpy.core.multiarray.scalar"} <= names
