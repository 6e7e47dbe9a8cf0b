"""The artifact contract between the three stages (TRAIN -> EXPORT -> RUN), defined once.

- ``names``: every file name in a run and an export folder, every tensor name, every metadata key;
- ``meta``: ``ModelMeta`` (what an artifact says about its model) and the value-range arithmetic;
- ``preprocess``: the one way an image file becomes a model input (the paper's fixed-size images in [0, 1],
  Appendix A), used by the training image folders, INT8 calibration and inference alike, and described in every
  exported file's metadata (``alitool.preprocess.*`` keys); ``preprocess.CONTRACT_VERSION`` is the contract's
  version, every exported ONNX file's ``model_version``.

This package imports nothing of alitool's but ``alitool.errors``, and no torch: the running side (an edge install
without PyTorch) and export/ both build on it.
"""
