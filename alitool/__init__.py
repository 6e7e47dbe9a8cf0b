"""alitool: Adversarially Learned Inference (Dumoulin et al., ICLR 2017) from training to TensorRT."""

__version__ = "0.1.0"
