"""TensorRT engines built from the exported ONNX networks (machines with an NVIDIA GPU only).

Kept small and behind :func:`autoseg._optional.get_tensorrt`: TensorRT cannot be installed on
machines without NVIDIA drivers, where this module fails with a one-line message.
"""

from __future__ import annotations

import logging
from pathlib import Path

from autoseg._atomic import write_atomic, write_json_atomic
from autoseg._optional import get_tensorrt
from autoseg.export.onnx import export_onnx, sidecar
from autoseg.inference.model import trained_folds

log = logging.getLogger(__name__)


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    *,
    input_shape: tuple[int, ...],
    max_batch: int = 8,
    fp16: bool = False,
    workspace_gb: float = 4.0,
) -> Path:
    """Build and serialize one engine with a dynamic batch profile (1, max_batch/2, max_batch).

    Args:
        onnx_path: the exported network.
        engine_path: where the engine goes.
        input_shape: ``(C, *patch)`` of one sample.
        max_batch: largest batch (windows x mirrored copies) the predictor will send.
        fp16: allow half-precision kernels.
        workspace_gb: builder scratch memory.
    """
    trt = get_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        msg = f"{onnx_path}: TensorRT cannot parse the ONNX model ({errors})"
        raise RuntimeError(msg)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(
        "input", (1, *input_shape), (max(1, max_batch // 2), *input_shape), (max_batch, *input_shape)
    )
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        msg = f"{onnx_path}: TensorRT could not build an engine"
        raise RuntimeError(msg)
    return write_atomic(engine_path, lambda tmp: tmp.write_bytes(bytes(serialized)))


def export_tensorrt(
    model_dir: Path, *, folds: list[str] | None = None, fp16: bool = False, max_batch: int = 8
) -> list[Path]:
    """ONNX export (if needed), then one engine per fold: ``fold_k/model.engine``."""
    get_tensorrt()  # fail before any work when TensorRT is absent
    folds = folds or trained_folds(model_dir)
    onnx_files = export_onnx(model_dir, folds=folds)
    info = sidecar(model_dir, folds, "tensorrt")
    shape = (info["input_channels"], *info["patch_size"])
    engines = [
        build_engine(p, p.with_name("model.engine"), input_shape=shape, max_batch=max_batch, fp16=fp16)
        for p in onnx_files
    ]
    write_json_atomic(model_dir / "export_tensorrt.json", info | {"fp16": fp16, "max_batch": max_batch})
    return engines
