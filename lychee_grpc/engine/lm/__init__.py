"""The language model's packed forward and its fused elementwise kernels."""
