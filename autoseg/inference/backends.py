"""Network backends for prediction: torch (the trained module), onnxruntime, TensorRT.

The predictor only calls ``network(x) -> logits`` on ``(B, C, *patch)`` tensors, so an exported
network is wrapped to look like a module; sliding window, TTA and ensembling stay the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from autoseg._optional import get_onnxruntime, get_tensorrt
from autoseg.errors import AutosegError, ModelError


class OnnxNetwork:
    """An exported fold run by onnxruntime (CUDA provider when asked and available, else CPU)."""

    def __init__(self, path: Path, *, device: torch.device, threads: int | None = None) -> None:
        ort = get_onnxruntime()
        if not path.is_file():
            msg = f"{path}: no ONNX model; run `autoseg export DATASET CONFIG --format onnx` first"
            raise ModelError(msg)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.training = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch (computed in float32)."""
        arr = np.ascontiguousarray(x.detach().float().cpu().numpy())
        (out,) = self.session.run(None, {self.input_name: arr})
        return torch.from_numpy(out).to(x.device)

    def eval(self) -> OnnxNetwork:
        """Exported networks are always in inference mode."""
        return self


class TensorRTNetwork:
    """A serialized TensorRT engine (built by ``autoseg export --format tensorrt``), run on CUDA.

    Reviewed but untested here: TensorRT installs only on machines with an NVIDIA GPU.
    """

    def __init__(self, path: Path, *, device: torch.device) -> None:
        trt = get_tensorrt()
        if device.type != "cuda":
            msg = "the TensorRT backend runs on a CUDA device; use --device cuda"
            raise AutosegError(msg)
        if not path.is_file():
            msg = f"{path}: no TensorRT engine; run `autoseg export ... --format tensorrt` first"
            raise ModelError(msg)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        self.context = self.engine.create_execution_context()
        self.device = device
        self.training = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch; input and output stay on the GPU (TensorRT 10 tensor API)."""
        x = x.to(self.device, torch.float32).contiguous()
        self.context.set_input_shape("input", tuple(x.shape))
        out = torch.empty(
            tuple(self.context.get_tensor_shape("logits")), device=self.device, dtype=torch.float32
        )
        self.context.set_tensor_address("input", x.data_ptr())
        self.context.set_tensor_address("logits", out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            msg = "TensorRT execution failed"
            raise RuntimeError(msg)
        stream.synchronize()
        return out

    def eval(self) -> TensorRTNetwork:
        """Engines are always in inference mode."""
        return self
