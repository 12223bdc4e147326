"""Export trained models for deployment: ONNX (+ onnxruntime backend) and TensorRT engines.

The network alone is exported (fixed patch, dynamic batch); sliding window, TTA, ensembling and
the way back to the source grid stay in autoseg's Python predictor, driven by a JSON sidecar.
"""
