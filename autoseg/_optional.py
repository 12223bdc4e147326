"""Optional dependencies, each behind a function whose error says what to install."""

from __future__ import annotations

from types import ModuleType

from autoseg.errors import MissingDependencyError


def get_onnxruntime() -> ModuleType:
    """``onnxruntime``, or a clear error."""
    try:
        import onnxruntime
    except ImportError as e:
        msg = "the ONNX backend needs onnxruntime: pip install 'autoseg[onnx]'"
        raise MissingDependencyError(msg) from e
    return onnxruntime


def get_onnx() -> ModuleType:
    """``onnx``, or a clear error."""
    try:
        import onnx
    except ImportError as e:
        msg = "ONNX export needs the onnx package: pip install 'autoseg[onnx]'"
        raise MissingDependencyError(msg) from e
    return onnx


def get_tensorrt() -> ModuleType:
    """``tensorrt``, or a clear error (it installs only on machines with an NVIDIA GPU)."""
    try:
        import tensorrt
    except ImportError as e:
        msg = ("TensorRT is not installed: on a machine with an NVIDIA GPU and CUDA, "
               "pip install 'autoseg[tensorrt]' (or NVIDIA's tensorrt wheel), then export again; "
               "elsewhere use --format onnx")
        raise MissingDependencyError(msg) from e
    return tensorrt
