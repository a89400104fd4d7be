"""`pagedllm bench latency | throughput | serve` (vLLM's `vllm bench`): workloads (datasets.py),
the three benchmarks, peer engines run on the same workload in the same process (peers.py;
OpenVINO GenAI in openvino_peer.py), per-token arrival times (timing.py), JSON results with
machine info (results.py) and plots (plot.py).

Every module keeps its top-level imports light (no torch) so `pagedllm --help` stays fast."""
