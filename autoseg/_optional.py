"""Optional dependencies, each behind a function whose error says what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from autoseg.errors import MissingDependencyError


def _require(module: str, msg: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(msg) from e


def get_onnxruntime() -> ModuleType:
    """``onnxruntime``, or a clear error."""
    return _require("onnxruntime", "the ONNX backend needs onnxruntime: pip install 'autoseg[onnx]'")


def get_onnx() -> ModuleType:
    """``onnx``, or a clear error."""
    return _require("onnx", "ONNX export needs the onnx package: pip install 'autoseg[onnx]'")


def get_tensorrt() -> ModuleType:
    """``tensorrt``, or a clear error (it installs only on machines with an NVIDIA GPU)."""
    return _require(
        "tensorrt",
        "TensorRT is not installed: on a machine with an NVIDIA GPU and "
        "CUDA, pip install 'autoseg[tensorrt]' (or NVIDIA's tensorrt wheel), then "
        "export again; elsewhere use --format onnx",
    )


def get_pynetdicom() -> ModuleType:
    """``pynetdicom`` (DICOM networking: ``--send-to``, ``autoseg send``), or a clear error."""
    return _require("pynetdicom", "sending to a PACS needs pynetdicom: pip install 'autoseg[pacs]'")
