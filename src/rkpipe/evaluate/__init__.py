"""Accuracy evaluation: perplexity, KL divergence and top-1 agreement of quantized models."""
