"""Preprocessor's rectangular mode (dynamic models): resized exactly as the square letterbox,
padded only to the next multiple of the stride."""
import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("cv2")

from edgetune_jobs.inference.preprocess import Letterbox, Preprocessor  # noqa: E402


def image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_rectangular_shapes_and_content(dtype):
    lb = Letterbox(128, 128)
    square, rect = Preprocessor(lb, dtype), Preprocessor(lb, dtype, pad_to_stride=32)
    for (h, w), padded in {(100, 200): (64, 128), (200, 100): (128, 64), (90, 90): (128, 128),
                           (50, 400): (32, 128)}.items():
        img = image(h, w)
        xs, info_s = square(img)
        xr, info_r = rect(img)
        assert xs.shape == (1, 128, 128, 3) and xr.shape == (1, *padded, 3) and xr.dtype == np.dtype(dtype)
        assert xr.flags["C_CONTIGUOUS"]
        assert info_r == info_s  # the same resize, so the same box rescaling
        np.testing.assert_array_equal(xr[0], xs[0, :padded[0], :padded[1]])  # content + padding 114
        assert (xr[0, info_r.new_h:] == 114).all() and (xr[0, :, info_r.new_w:] == 114).all()


def test_rectangular_buffers_are_reused_and_repadded():
    rect = Preprocessor(Letterbox(128, 128), "uint8", pad_to_stride=32)
    a, _ = rect(image(100, 200, 1))     # 128x64 -> (64, 128)
    b, info = rect(image(90, 200, 2))   # 128x58 -> (64, 128): same buffer, shorter content
    assert a is b and info.new_h == 58
    assert (b[0, 58:] == 114).all()  # the previous image's last rows were cleared


def test_rectangular_mode_rejects_what_it_cannot_do():
    with pytest.raises(ValueError, match="must divide"):
        Preprocessor(Letterbox(128, 128), pad_to_stride=48)
    with pytest.raises(ValueError, match="buffers of its own"):
        Preprocessor(Letterbox(64, 64), out=np.empty((1, 64, 64, 3), np.uint8), pad_to_stride=32)
