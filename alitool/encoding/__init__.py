"""The batched encode path: SOURCES -> decoded, prepared images -> fixed-size batches -> x -> z -> .npy.

This is inference with the encoder G_z(x) of the paper (Dumoulin et al. 2017, section 2), at scale: the
features are the posterior mean (default), a sample of q(z | x), or the section 4.3 SVM feature vector.
One module per job:

- ``decoding``: threaded decoding of image files and video frames into [0, 1] samples, in input order;
- ``batching``: fixed-size, zero-padded model batches, and the one padded fixed-size model call;
- ``feature_files``: the features ``.npy`` and its index CSV, written atomically as a pair;
- ``report``: what a run did (rows, skipped inputs, notices) and how it is printed;
- ``encode``: the model's input recipe, and the whole path from sources to a features file.

Why it is fast and small:
- decoding and resizing run in a thread pool (OpenCV releases the GIL), fed by one thread that walks the
  sources and reads video frames, while the main thread runs the model: the three overlap;
- work travels in small ordered chunks through a bounded queue, so memory is O(batch) however many inputs;
- batches have one fixed size (the last one is zero-padded), which ONNX Runtime and TensorRT profiles like;
- rows go into a memory-mapped ``.npy`` in a hidden temporary file that only replaces the output once
  complete, together with an index CSV (row, source, frame, time) so that no row is anonymous.

Nothing here imports torch: the encode path runs on an install without PyTorch.
"""
