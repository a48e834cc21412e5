"""Measuring code, in one place: summary statistics over repetitions, peak memory, and the
rkllm runtime's own performance log parsed into rows.

The engines that run on a board (:mod:`rkpipe.engines`) measure themselves and stay
self-contained; this package summarises what they report and measures the host's own steps.
"""
