"""attnround-pl: post-training quantization with Attention Round."""

__version__ = "0.1.0"
