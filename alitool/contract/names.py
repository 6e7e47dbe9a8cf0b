"""Every name that crosses a stage boundary: files in a run and an export folder, tensors in the exported graphs,
metadata keys. Training writes them, export reads and writes them, the running side reads them; each is defined
here once so that the three stages cannot drift apart.
"""

from __future__ import annotations

# ---- A run folder (``alitool train``): runs/<name>/ -------------------------------------------------------
RUNS_ROOT = "runs"
CHECKPOINT = "checkpoint.pt"
RUN_CONFIG = "config.yaml"
METRICS = "metrics.csv"
LOSS_PLOT = "losses.png"
SAMPLES_DIR = "samples"
RECONSTRUCTIONS_DIR = "reconstructions"
EXPORT_DIR = "export"

# ---- An export folder (``alitool export``): <run>/export/ -------------------------------------------------
ENCODER_ONNX = "encoder.onnx"
ENCODER_INT8_ONNX = "encoder.int8.onnx"
DECODER_ONNX = "decoder.onnx"
ENCODER_FILES = (ENCODER_ONNX, ENCODER_INT8_ONNX)  # in order of preference when a folder is opened
DECODER_FILES = (DECODER_ONNX,)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
ENGINE_SIDECAR_SUFFIX = ".json"  # a TensorRT engine's metadata, beside it: encoder.engine -> encoder.engine.json

# ---- Tensors of the exported graphs (ONNX inputs/outputs, TensorRT bindings) ------------------------------
IMAGES = "images"  # encoder input and decoder output: float32 [N, C, H, W] in the value range
Z = "z"  # decoder input: float32 [N, latent_dim]
Y = "y"  # a conditional model's second input (paper section 4.4): float32 [N, y_dim]
Z_MEAN = "z_mean"
Z_LOG_SIGMA = "z_log_sigma"
FEATURES = "features"  # the section 4.3 SVM feature vector
ENCODER_OUTPUTS = (Z_MEAN, Z_LOG_SIGMA, FEATURES)

# ---- Metadata keys (ONNX metadata_props, the TensorRT sidecar) --------------------------------------------
META_KEY = "alitool"  # ModelMeta as JSON
GRAPH_KEY = "alitool.graph"  # "encoder" | "decoder"
PRECISION_KEY = "alitool.precision"  # "fp32" | "int8" | "fp16"
INT8_SCHEME_KEY = "alitool.int8_scheme"  # an INT8 file's quantisation scheme (export/quantize.py SCHEMES)
QUANTIZATION_KEY = "alitool.quantization"  # the same in words
