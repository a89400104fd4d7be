"""CPU bookkeeping over token counts and block ids: no torch, no tensors."""
