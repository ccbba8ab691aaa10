"""ONNX Runtime flavours: exactly one may be installed (doctor's check), read from this
environment's real package metadata and from given version tables."""

from __future__ import annotations

from importlib import metadata

from nscmonitor.ops.runtime_packages import ORT_DISTRIBUTIONS, installed_versions, ort_flavour_check


def test_one_flavour_is_fine():
    ok, msg = ort_flavour_check({"onnxruntime-gpu": "1.23.2"})
    assert ok and msg == "onnxruntime-gpu 1.23.2"


def test_cpu_and_gpu_together_are_reported_with_the_fix():
    ok, msg = ort_flavour_check({"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.23.2"})
    assert not ok
    assert "onnxruntime 1.32.0, onnxruntime-gpu 1.23.2 are installed together" in msg
    assert msg.endswith("pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu")


def test_none_installed_says_which_extra_to_install():
    ok, msg = ort_flavour_check({})
    assert not ok and "nscmonitor[cpu]" in msg and "nscmonitor[gpu]" in msg


def test_this_environment_is_read_from_package_metadata():
    found = installed_versions()
    assert set(found) <= set(ORT_DISTRIBUTIONS)
    assert found.get("onnxruntime") == metadata.version("onnxruntime")  # the test venv installs the cpu extra
    assert ort_flavour_check(found)[0] == (len(found) == 1)


def test_cuda_libraries_are_preloaded_through_onnxruntime_when_it_can():
    from types import SimpleNamespace

    from nscmonitor.engines.ort import preload_cuda_libraries

    calls = []
    # stand-ins for other onnxruntime releases (the installed one is the CPU build)
    assert preload_cuda_libraries(SimpleNamespace(__version__="1.32.0", preload_dlls=lambda: calls.append(1))) == ""
    assert calls == [1]
    note = preload_cuda_libraries(SimpleNamespace(__version__="1.18.1"))
    assert "1.18.1 cannot preload" in note and "library path" in note

    def broken():
        raise OSError("libcudnn.so.9: cannot open shared object file")

    assert "libcudnn.so.9" in preload_cuda_libraries(SimpleNamespace(__version__="1.22.0", preload_dlls=broken))


def test_tensorrt_version_is_judged_from_package_metadata():
    from nscmonitor.ops.runtime_packages import tensorrt_check

    assert tensorrt_check({}) is None
    ok, msg = tensorrt_check({"tensorrt": "11.1.0.6"})
    assert ok and "strongly typed" in msg
    ok, msg = tensorrt_check({"tensorrt-cu12": "10.13.3.9"})
    assert ok and "builder flag" in msg
    ok, msg = tensorrt_check({"tensorrt": "12.0.0"})
    assert not ok and "newer than this nscmonitor supports" in msg
    ok, msg = tensorrt_check({"tensorrt": "8.6.1"})
    assert not ok and "too old" in msg


def test_openvino_telemetry_decision_is_read_from_its_file_per_platform() -> None:
    from nscmonitor.ops.runtime_packages import openvino_telemetry_check, openvino_telemetry_file

    assert openvino_telemetry_file("Linux", "/home/lab", None) == "/home/lab/intel/openvino_telemetry"
    assert openvino_telemetry_file("Windows", "C:\\Users\\lab", "C:\\Users\\lab\\AppData\\Local") == \
        "C:\\Users\\lab\\AppData\\Local\\Intel Corporation\\openvino_telemetry"
    assert openvino_telemetry_check("0\n") == "off (opted out)"
    assert openvino_telemetry_check("1").startswith("on (opted in)")
    for undecided in (None, "", "maybe"):
        assert "no decision recorded" in openvino_telemetry_check(undecided)
        assert "opt_in_out --opt_out" in openvino_telemetry_check(undecided)
