"""Where a figure was measured, for the provenance of every result: the device (a Jetson's
model, L4T/JetPack release and power mode, or the host's CPU and GPU) and the versions of the
libraries that did the work."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from importlib import metadata
from typing import Any


def versions(*names: str) -> dict[str, str]:
    """Installed distribution versions (no imports); missing ones are left out."""
    out = {}
    for name in names:
        for dist in (name, name.replace("_", "-")):
            try:
                out[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    if "tensorrt" in names and "tensorrt" not in out:
        try:  # the Jetson image installs tensorrt as a Debian package, not a wheel
            import tensorrt as trt
            out["tensorrt"] = trt.__version__
        except ImportError:
            pass
    return out


# --- device description ------------------------------------------------------------------

# L4T release -> JetPack (NVIDIA's release table; JetPack 5 = L4T R35.x, JetPack 6 = R36.x)
_L4T_TO_JETPACK = {
    "34.1.0": "5.0 DP", "34.1.1": "5.0.1 DP", "35.1.0": "5.0.2", "35.2.1": "5.1",
    "35.3.1": "5.1.1", "35.4.1": "5.1.2", "35.5.0": "5.1.3", "35.6.0": "5.1.4",
    "36.2.0": "6.0 DP", "36.3.0": "6.0", "36.4.0": "6.1", "36.4.3": "6.2",
}


def parse_nv_tegra_release(text: str) -> dict[str, str]:
    """'# R35 (release), REVISION: 1.0, GCID: ...' -> {'l4t': '35.1.0', 'jetpack': '5.0.2'}."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    if not m:
        return {}
    rev = m.group(2).split(".")
    l4t = ".".join([m.group(1)] + (rev + ["0"])[:2])
    out = {"l4t": l4t}
    if l4t in _L4T_TO_JETPACK:
        out["jetpack"] = _L4T_TO_JETPACK[l4t]
    return out


def parse_nvpmodel(text: str) -> str | None:
    """'NV Power Mode: MAXN\\n0' -> 'MAXN (mode 0)'."""
    m = re.search(r"NV Power Mode:\s*(\S+)", text)
    if not m:
        return None
    mode = re.search(r"^\s*(\d+)\s*$", text, re.M)
    return f"{m.group(1)} (mode {mode.group(1)})" if mode else m.group(1)


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return fh.read().decode(errors="replace").replace("\x00", "").strip()
    except OSError:
        return None


def cpu_model() -> str:
    text = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Model", "Hardware"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.M)
        if m:
            return m.group(1).strip()
    return platform.processor() or platform.machine()


def device_info(gpu_name: str | None = None) -> dict[str, Any]:
    """Where the figures were measured: a Jetson (model, L4T/JetPack, power mode) or a host."""
    info: dict[str, Any] = {"arch": platform.machine(), "cpu": cpu_model(),
                            "cpus": os.cpu_count() or 1}
    dt_model = _read("/proc/device-tree/model")
    tegra = _read("/etc/nv_tegra_release")
    if dt_model or tegra:
        info["kind"] = "jetson" if tegra or "jetson" in (dt_model or "").lower() else "board"
        if dt_model:
            info["model"] = dt_model
        if tegra:
            info.update(parse_nv_tegra_release(tegra))
        if shutil.which("nvpmodel"):
            try:
                out = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=5)
                mode = parse_nvpmodel(out.stdout)
                if mode:
                    info["power_mode"] = mode
            except (OSError, subprocess.SubprocessError):
                pass
    else:
        info["kind"] = "gpu" if gpu_name else "cpu"
    if gpu_name:
        info["gpu"] = gpu_name
    return info


def peak_rss_mib() -> float | None:
    """This process's peak resident memory in MiB (VmHWM: model, runtime and buffers included),
    else getrusage's ru_maxrss; None where neither exists."""
    text = _read("/proc/self/status") or ""
    m = re.search(r"^VmHWM:\s*(\d+)\s*kB", text, re.M)
    if m:
        return round(int(m.group(1)) / 1024.0, 1)
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)  # kB on Linux
    except (ImportError, OSError):
        return None


MEMORY_PROVENANCE = {
    "rss": "peak resident set of the step's process (VmHWM), model loading included",
    "device": "peak device memory allocated by the runtime where it can be read (torch CUDA); "
              "not measured for TensorRT and CPU runtimes",
}
