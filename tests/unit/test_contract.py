"""The operator/job contract: result documents, progress lines, device labels."""

import pytest

from edgetune_jobs import contract


def test_result_round_trip_and_size_limit():
    doc = contract.make_result("benchmark", True, metrics={"fps": float("nan"), "pipeline": {"p50_ms": 1.5}},
                               message="x" * 10_000)
    text = contract.encode_result(doc)
    assert len(text.encode()) <= contract.MAX_RESULT_BYTES
    back = contract.decode_result(text)
    assert back["metrics"] == {"fps": None, "pipeline": {"p50_ms": 1.5}}
    assert back["message"].endswith("...")


@pytest.mark.parametrize("text, needle", [
    ("Traceback...\nValueError: boom", "ValueError: boom"),
    ('{"schema": "other"}', "schema"),
    ('{"schema": "edgetune.io/result/v1", "step": "finetune", "ok": "yes"}', "'ok'"),
])
def test_decode_rejects_what_is_not_a_result(text, needle):
    with pytest.raises(contract.ResultError, match=needle):
        contract.decode_result(text)


def test_unknown_step_is_refused():
    with pytest.raises(ValueError, match="unknown step"):
        contract.step_command("train")


def test_progress_lines_last_record_wins():
    lines = ["noise", contract.progress_line(epoch=1, percent=10.0), "x " + contract.progress_line(epoch=2, percent=20.0),
             contract.PROGRESS_PREFIX + "{broken"]
    assert contract.parse_progress(lines) == {"epoch": 2, "percent": 20.0}


@pytest.mark.parametrize("device, label", [
    ({"kind": "jetson", "model": "NVIDIA Jetson AGX Orin Developer Kit\x00", "jetpack": "5.1.2",
      "power_mode": "MAXN (mode 0)", "arch": "aarch64"},
     "NVIDIA Jetson AGX Orin Developer Kit (JetPack 5.1.2, MAXN (mode 0))"),
    ({"kind": "jetson", "l4t": "36.2.0"}, "Jetson (L4T 36.2.0)"),
    ({"kind": "gpu", "gpu": "NVIDIA H100 80GB HBM3", "cpu": "x", "cpus": 16}, "NVIDIA H100 80GB HBM3"),
    ({"kind": "cpu", "cpu": "AMD EPYC", "cpus": 2, "arch": "x86_64"}, "AMD EPYC (2 CPUs, x86_64)"),
    ("jetson-orin-0", "jetson-orin-0"),
    (None, ""),
])
def test_device_label(device, label):
    assert contract.device_label(device) == label
