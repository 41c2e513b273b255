"""Prompt side: the template, validation and tokenization, M-RoPE positions, image decoding."""
