"""Error bounds the quantized-kernel tests share."""

INT16_ACT_REL = 1e-4
"""Bound on the relative (Frobenius) error of the compiled kernel against the float product with
the dequantized weight: activations quantized to int16 per 32 columns (half a step is
amax / 65534 per value, ~2e-5 relative on random data), at every row count."""
