"""Why the Mamba-based families (Mamba, Mamba2, FalconMamba, Jamba, Bamba, GraniteMoeHybrid) are
refused under tensor and pipeline parallelism, in one place for their model classes."""

MAMBA_PARALLEL_REFUSAL = (
    "its Mamba mixers are not split across ranks: in_proj packs the gate, the SSM input, B, C "
    "and dt into one projection whose parts split differently (channels and heads vs the "
    "replicated B/C groups), the depthwise conv1d and the per-request conv/SSM state cache "
    "would be sharded by channel, and out_proj's norm (Mamba2's gated RMSNorm over groups) "
    "would need an all-reduce; a pipeline stage would also need its own slice of the state "
    "cache. Not done yet: run these models with tensor_parallel_size=1 and "
    "pipeline_parallel_size=1 (data_parallel_size works)"
)
