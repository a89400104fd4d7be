"""Pure tensor functions the sampler composes; each works on a [B, V] float32 logits batch."""
