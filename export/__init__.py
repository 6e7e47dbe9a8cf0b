"""Export stage (``import alitool.export``): ONNX with metadata, static INT8 ONNX, TensorRT engines."""
