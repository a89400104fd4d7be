"""Prometheus exporter with vLLM's metric names under a `pagedllm:` prefix.

Each logger owns its own CollectorRegistry (several servers or tests in one process never clash);
the server renders it at /metrics with `render()`.

With data parallelism (N > 1 engine cores) every series also carries vLLM's `engine="i"` label:
the core's own gauges (running, waiting, KV usage, KV blocks) and the counters and histograms of
the requests it served. Totals are the sum over `engine` (`sum without (engine) (...)`); each
request is counted under exactly one core. With one core the label is left out, as before.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from pagedllm.metrics.loggers import StatLoggerBase
from pagedllm.metrics.request_stats import IterationStats
from pagedllm.metrics.stats import LoRAStats, SchedulerStats

PREFIX = "pagedllm:"
FINISH_REASONS = ("stop", "length", "abort")

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                    5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                120.0, 240.0, 480.0, 960.0)
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)


class PrometheusStatLogger(StatLoggerBase):
    def __init__(self, model_name: str, num_engines: int = 1) -> None:
        self.registry = CollectorRegistry()
        self.model_name = model_name
        self.num_engines = num_engines
        labels = ["model_name"] + (["engine"] if num_engines > 1 else [])

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(PREFIX + name, doc, labels, registry=self.registry)

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(PREFIX + name, doc, labels + list(extra), registry=self.registry)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(PREFIX + name, doc, labels, buckets=buckets, registry=self.registry)

        self.running = gauge("num_requests_running", "Requests in the running batch.")
        self.waiting = gauge("num_requests_waiting", "Requests waiting to be scheduled.")
        self.kv_usage = gauge("kv_cache_usage_perc", "KV cache usage (1 = every block in use).")
        self.kv_blocks = gauge("num_kv_cache_blocks", "KV cache blocks in total.")
        self.prefix_queries = counter("prefix_cache_queries",
                                      "Prompt tokens looked up in the prefix cache.")
        self.prefix_hits = counter("prefix_cache_hits", "Prompt tokens found in the prefix cache.")
        self.preemptions = counter("num_preemptions", "Preemptions by the scheduler.")
        self.spec_drafts = counter("spec_decode_num_drafts",
                                   "Speculative decoding: drafts verified.")
        self.spec_draft_tokens = counter("spec_decode_num_draft_tokens",
                                         "Speculative decoding: draft tokens verified.")
        self.spec_accepted = counter("spec_decode_num_accepted_tokens",
                                     "Speculative decoding: draft tokens accepted.")
        self.spec_accepted_per_pos = counter(
            "spec_decode_num_accepted_tokens_per_pos",
            "Speculative decoding: drafts whose token at this position was accepted.",
            ("position",))
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens of requests (prefilled).")
        self.generation_tokens = counter("generation_tokens", "Generated tokens.")
        self.request_success = counter("request_success", "Finished requests by finish reason.",
                                       ("finished_reason",))
        self.lora_requests = counter("lora_requests", "Finished requests per LoRA adapter.",
                                     ("lora_name",))
        self.lora_loads = counter("lora_loads", "LoRA adapters read from disk into CPU memory.")
        self.lora_evictions = counter(
            "lora_evictions", "LoRA adapters evicted: from CPU memory (tier=cpu) or from a "
            "resident slot (tier=slot) to make room for another.", ("tier",))
        self.lora_info = Gauge(
            PREFIX + "lora_requests_info", "Running stats on LoRA requests (vLLM's): the "
            "adapters of running and waiting requests; the value is the time of the update.",
            labels + ["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
            registry=self.registry)
        self.ttft = histogram("time_to_first_token_seconds", "Time to first token.",
                              _LATENCY_BUCKETS)
        self.itl = histogram("inter_token_latency_seconds", "Time between output tokens.",
                             _LATENCY_BUCKETS)
        self.tpot = histogram("time_per_output_token_seconds",
                              "Mean time per output token of each finished request.",
                              _LATENCY_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "End-to-end request latency.",
                             _E2E_BUCKETS)
        self.request_prompt_tokens = histogram("request_prompt_tokens",
                                               "Prompt tokens per finished request.",
                                               _TOKEN_BUCKETS)
        self.request_generation_tokens = histogram("request_generation_tokens",
                                                   "Generated tokens per finished request.",
                                                   _TOKEN_BUCKETS)
        for engine_idx in range(num_engines):
            self._export_zeros(self._labels(engine_idx))

    def _labels(self, engine_idx: int) -> dict[str, str]:
        if self.num_engines == 1:
            return {"model_name": self.model_name}
        return {"model_name": self.model_name, "engine": str(engine_idx)}

    def _export_zeros(self, labels: dict[str, str]) -> None:
        """So the series exist from the start."""
        for reason in FINISH_REASONS:
            self.request_success.labels(**labels, finished_reason=reason)
        for metric in (self.running, self.waiting, self.kv_usage, self.kv_blocks):
            metric.labels(**labels).set(0)
        for metric in (self.prefix_queries, self.prefix_hits, self.preemptions,
                       self.prompt_tokens, self.generation_tokens, self.spec_drafts,
                       self.spec_draft_tokens, self.spec_accepted):
            metric.labels(**labels)

    def set_num_kv_blocks(self, num_blocks: int, engine_idx: int = 0) -> None:
        self.kv_blocks.labels(**self._labels(engine_idx)).set(num_blocks)

    def record(self, scheduler_stats: SchedulerStats | None,
               iteration_stats: IterationStats | None, engine_idx: int = 0) -> None:
        if scheduler_stats is not None:
            self._record_scheduler(scheduler_stats, self._labels(engine_idx))
        if iteration_stats is not None:
            self._record_iteration(iteration_stats, self._labels(engine_idx))

    def _record_scheduler(self, stats: SchedulerStats, labels: dict[str, str]) -> None:
        self.running.labels(**labels).set(stats.num_running_reqs)
        self.waiting.labels(**labels).set(stats.num_waiting_reqs)
        self.kv_usage.labels(**labels).set(stats.kv_cache_usage)
        self.preemptions.labels(**labels).inc(stats.num_preemptions)
        if stats.prefix_cache_stats is not None:
            self.prefix_queries.labels(**labels).inc(stats.prefix_cache_stats.queries)
            self.prefix_hits.labels(**labels).inc(stats.prefix_cache_stats.hits)
        spec = stats.spec_decoding_stats
        if spec is not None:
            self.spec_drafts.labels(**labels).inc(spec.num_drafts)
            self.spec_draft_tokens.labels(**labels).inc(spec.num_draft_tokens)
            self.spec_accepted.labels(**labels).inc(spec.num_accepted_tokens)
            for position, count in enumerate(spec.num_accepted_tokens_per_pos):
                self.spec_accepted_per_pos.labels(**labels, position=str(position)).inc(count)
        if stats.lora_stats is not None:
            self._record_lora(stats.lora_stats, labels)

    def _record_lora(self, stats: LoRAStats, labels: dict[str, str]) -> None:
        self.lora_loads.labels(**labels).inc(stats.num_loads)
        self.lora_evictions.labels(**labels, tier="cpu").inc(stats.num_cpu_evictions)
        self.lora_evictions.labels(**labels, tier="slot").inc(stats.num_slot_evictions)
        # one series, the latest (vLLM keeps every label set it ever saw)
        self.lora_info.clear()
        self.lora_info.labels(
            **labels, max_lora=str(stats.max_lora),
            waiting_lora_adapters=",".join(stats.waiting_lora_adapters),
            running_lora_adapters=",".join(stats.running_lora_adapters),
        ).set_to_current_time()  # fmt: skip

    def _record_iteration(self, stats: IterationStats, labels: dict[str, str]) -> None:
        self.prompt_tokens.labels(**labels).inc(stats.num_prompt_tokens)
        self.generation_tokens.labels(**labels).inc(stats.num_generation_tokens)
        for value in stats.time_to_first_tokens:
            self.ttft.labels(**labels).observe(value)
        for value in stats.inter_token_latencies:
            self.itl.labels(**labels).observe(value)
        for finished in stats.finished_requests:
            self.request_success.labels(**labels, finished_reason=finished.finish_reason).inc()
            if finished.lora_name is not None:
                self.lora_requests.labels(**labels, lora_name=finished.lora_name).inc()
            self.e2e.labels(**labels).observe(finished.e2e_latency)
            self.request_prompt_tokens.labels(**labels).observe(finished.num_prompt_tokens)
            self.request_generation_tokens.labels(**labels).observe(
                finished.num_generation_tokens)
            if finished.mean_time_per_output_token is not None:
                self.tpot.labels(**labels).observe(finished.mean_time_per_output_token)

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of the /metrics response."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
