"""Which ONNX Runtime distributions are installed, and whether they collide.

Every ONNX Runtime flavour on PyPI (onnxruntime, onnxruntime-gpu, onnxruntime-openvino, ...)
installs the same ``onnxruntime`` Python package. With two of them in one environment the one
installed last overwrites the other's files; uninstalling either then removes files the other
needs, and the CUDA provider silently disappears (sessions fall back to the CPU). pip cannot
see the conflict, so ``doctor`` must.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import PurePosixPath, PureWindowsPath

ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml",
                     "onnxruntime-training", "onnxruntime-qnn")


def installed_versions(names: tuple[str, ...] = ORT_DISTRIBUTIONS) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def ort_flavour_check(installed: dict[str, str]) -> tuple[bool, str]:
    """(ok, message) for the ONNX Runtime distributions found (name -> version)."""
    if not installed:
        return False, ("no ONNX Runtime installed: pip install 'nscmonitor[cpu]' (CPU) or "
                       "'nscmonitor[gpu]' (NVIDIA GPU), never both")
    found = ", ".join(f"{n} {v}" for n, v in sorted(installed.items()))
    if len(installed) == 1:
        return True, found
    keep = "onnxruntime-gpu" if "onnxruntime-gpu" in installed else sorted(installed)[0]
    drop = " ".join(n for n in sorted(installed) if n != keep)
    return False, (f"{found} are installed together: they overwrite each other's 'onnxruntime' package "
                   f"(the CUDA provider can silently disappear). Fix: pip uninstall -y {drop} {keep} && "
                   f"pip install {keep}")


TENSORRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11")


def tensorrt_check(installed: dict[str, str]) -> tuple[bool, str] | None:
    """(ok, message) for the TensorRT found by package metadata (without importing it: the
    import loads CUDA), or None when none is installed."""
    if not installed:
        return None
    from nscmonitor.engines.base import EngineError
    from nscmonitor.engines.tensorrt import trt_major

    name, version = next(iter(installed.items()))
    try:
        major = trt_major(version)
    except EngineError as exc:
        return False, str(exc)
    how = "strongly typed: fp16 from a converted graph, int8 from Q/DQ" if major >= 11 else \
        "fp16 by builder flag, int8 from Q/DQ"
    return True, f"{name} {version} ({how})"


def openvino_telemetry_file(system: str, home: str, local_appdata: str | None) -> str:
    """Where OpenVINO keeps the telemetry decision of this user (its ``opt_in_out`` writes it)."""
    if system == "Windows":
        return str(PureWindowsPath(local_appdata or home, "Intel Corporation", "openvino_telemetry"))
    return str(PurePosixPath(home, "intel", "openvino_telemetry"))


def openvino_telemetry_check(decision: str | None) -> str:
    """What ``doctor`` says of OpenVINO's usage statistics, from the decision file's text
    (None: no file). Importing OpenVINO starts its telemetry, which sends anonymous usage
    data when no decision is recorded; an instrument PC should not do that unnoticed."""
    text = (decision or "").strip()
    if text == "0":
        return "off (opted out)"
    if text == "1":
        return "on (opted in); run 'opt_in_out --opt_out' to stop it"
    return ("on by default: no decision recorded, so OpenVINO may send anonymous usage data; "
            "run 'opt_in_out --opt_out' to stop it")
