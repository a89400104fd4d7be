"""The engine's command-line flags (vLLM's names), shared by every subcommand that runs a model."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from pagedllm.config.cache import KV_CACHE_DTYPES
from pagedllm.engine.arg_utils import EngineArgs


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine")
    group.add_argument("--dtype", default="auto",
                       choices=["auto", "float32", "bfloat16", "float16"],
                       help="model dtype; auto: the checkpoint's bfloat16/float16 (float16 for "
                            "float32 ones on GPU; float32 on CPU). On CPU a half model keeps its "
                            "weights half and computes in float32 (exact widening)")
    group.add_argument("--max-model-len", type=int, default=None,
                       help="longest prompt + output in tokens (default: the model's context)")
    group.add_argument("--max-num-seqs", type=int, default=128,
                       help="most requests batched in one step")
    group.add_argument("--scheduling-policy", choices=["fcfs", "priority"], default="fcfs",
                       help="waiting-queue order: fcfs (arrival) or priority (a request's "
                            "`priority`, lower first, then arrival; a higher-priority request "
                            "may preempt running lower-priority ones)")
    group.add_argument("--max-num-batched-tokens", type=int, default=None,
                       help="token budget of one step (default 2048 with chunked prefill)")
    group.add_argument("--block-size", type=int, default=16, help="tokens per KV cache block")
    group.add_argument("--kv-cache-memory", default=None,
                       help="KV cache budget, e.g. 2GiB (default: a quarter of free memory)")
    group.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction,
                       default=True, help="reuse KV blocks of shared prompt prefixes")
    group.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction,
                       default=True, help="split long prompts across steps")
    group.add_argument("--seed", type=int, default=0, help="random seed of the engine")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: auto)")
    group.add_argument("--attention-backend", default=None, help="attention backend name")
    group.add_argument("--task", default="auto",
                       choices=["auto", "generate", "embed", "classify", "score"],
                       help="generate text, embed (pooled hidden states; decoders use the last "
                            "token), or classify (sequence classifiers and cross-encoders, which "
                            "also serve /score and /rerank; 'score' is an alias); auto: classify "
                            "or embed for encoder models such as BERT")
    group.add_argument("--num-threads", type=int, default=None,
                       help="CPU threads for the engine, per rank (default: physical cores / "
                            "ranks)")
    group.add_argument("--quantization", default=None,
                       choices=["auto", "none", "dequantize", "int8", "int4", "gguf", "awq",
                                "gptq"],
                       help="weight quantization (default auto: what the checkpoint holds; a "
                            "quantized GGUF runs natively, 'none' dequantizes it)")
    group.add_argument("--kv-cache-dtype", default="auto", choices=list(KV_CACHE_DTYPES),
                       help="KV cache storage: auto (the model dtype), fp16, or 8 bits with "
                            "scales (int8, fp8)")
    group.add_argument("--quantized-activation-dtype", default="int16", choices=["int16", "int8"],
                       help="activations of the compiled quantized linears (Q4/Q8/K-quant "
                            "weights): int16 (default: the dequantized float model's greedy "
                            "tokens) or int8 (u8 x s8 dot products, faster batched on AVX-512 "
                            "VNNI, llama.cpp's precision; greedy tokens may differ)")
    group.add_argument("--enforce-eager", action="store_true",
                       help="run the model module by module in eager PyTorch (no fused compiled "
                            "decoder layers)")
    group.add_argument("--structured-outputs-config", default=None, type=_structured_config,
                       help='grammar backend and options as JSON, e.g. \'{"backend": "xgrammar", '
                            '"disable_any_whitespace": true}\' (backend: auto | xgrammar)')
    group.add_argument("--speculative-config", default=None, type=_speculative_config,
                       help='speculative decoding as JSON, e.g. \'{"method": "ngram", '
                            '"num_speculative_tokens": 4, "prompt_lookup_max": 4}\'')
    group.add_argument("--reasoning-parser", default=None,
                       help="the model's reasoning format: its thinking goes to the message's "
                            "`reasoning` and is left unconstrained by structured outputs "
                            f"(one of: {_names('reasoning')})")
    add_parallel_args(parser)
    lora = parser.add_argument_group("LoRA")
    lora.add_argument("--enable-lora", action="store_true",
                      help="serve PEFT LoRA adapters over the base model")
    lora.add_argument("--max-loras", type=int, default=1,
                      help="distinct adapters in one step (resident slots)")
    lora.add_argument("--max-lora-rank", type=int, default=16, help="largest adapter rank")
    lora.add_argument("--max-cpu-loras", type=int, default=None,
                      help="adapters cached in CPU memory (default: --max-loras)")
    media = parser.add_argument_group("images (vision-language models)")
    media.add_argument("--limit-mm-per-prompt", default=None,
                       help='images per prompt as JSON, e.g. \'{"image": 2}\' (default: 1)')
    media.add_argument("--max-image-bytes", type=int, default=None,
                       help="encoded size of one image (default: 20 MiB)")
    media.add_argument("--max-image-pixels", type=int, default=None,
                       help="width x height of one image (default: 4096 x 4096)")
    media.add_argument("--allowed-local-media-path", default=None,
                       help="directory that file: image URLs may read from (default: refused)")
    media.add_argument("--allowed-media-domains", nargs="+", default=None,
                       help="hosts that http(s) image URLs may be fetched from (default: none)")
    media.add_argument("--encoder-cache-size", type=int, default=None,
                       help="image embedding tokens whose encoder outputs are kept, keyed by "
                            "image hash (default: max(max_num_batched_tokens, max_model_len))")
    _add_data_parallel_args(parser)


def _add_data_parallel_args(parser: argparse.ArgumentParser) -> None:
    from pagedllm.config.parallel import DP_ROUTING_POLICIES

    group = parser.add_argument_group("data parallelism")
    group.add_argument("-dp", "--data-parallel-size", type=_positive_int, default=1,
                       help="engine cores, each its own process with its own KV cache, behind "
                            "this one front end; requests are balanced over them. Each core gets "
                            "physical cores / N threads unless --num-threads says otherwise")
    group.add_argument("--data-parallel-routing", default="prefix_aware",
                       choices=list(DP_ROUTING_POLICIES),
                       help="prefix_aware: a prompt whose leading blocks went to a core goes "
                            "there again unless that core is much busier; least_loaded: by load "
                            "alone (default prefix_aware)")
    group.add_argument("--data-parallel-backend", "-dpb", default="mp", choices=["mp", "ray"],
                       help="where the engine cores run: mp (processes on this machine) or ray "
                            "(Ray actors placed by a placement group on the cluster of "
                            "--ray-address / RAY_ADDRESS, possibly on other machines; each "
                            "core's -tp/-pp ranks run as processes on its node)")
    group.add_argument("--data-parallel-size-local", "-dpl", type=_positive_int, default=None,
                       help="engine cores on this machine: with --data-parallel-backend ray the "
                            "first this many are placed on the API server's node, the others "
                            "wherever the cluster has room (default: Ray decides)")


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def add_parallel_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("parallelism")
    group.add_argument("-tp", "--tensor-parallel-size", type=int, default=1,
                       help="ranks each layer's weights are split over (heads, MLP, vocabulary); "
                            "each rank gets --num-threads threads (default: physical cores / "
                            "ranks)")
    group.add_argument("-pp", "--pipeline-parallel-size", type=int, default=1,
                       help="pipeline stages the decoder layers are split into (as many "
                            "micro-batches in flight, so the stages do not idle)")
    group.add_argument("--enable-expert-parallel", action="store_true",
                       help="MoE models: spread whole experts over the -tp ranks (each computes "
                            "its experts' tokens) instead of splitting every expert")
    group.add_argument("--distributed-executor-backend", default=None,
                       choices=["uni", "mp", "ray"],
                       help="where the ranks run: mp (a process per rank, the default for "
                            "several), ray (Ray actors on a cluster), uni (one rank in process)")
    group.add_argument("--cpu-omp-threads-bind", default=None,
                       help="CPUs of each rank on this machine (TP/PP worker, -dp core): auto "
                            "(a disjoint share of the allowed CPUs per rank when there are "
                            "several; a warning and no pinning when ranks x threads exceed the "
                            "cores), nobind, or one list per rank such as '0-3|4-7' (default: "
                            "PAGEDLLM_CPU_OMP_THREADS_BIND, else auto)")
    group.add_argument("--ray-address", default=None,
                       help="the Ray cluster for --distributed-executor-backend ray (default: "
                            "RAY_ADDRESS, else a local Ray)")


def _names(kind: str) -> str:
    """Registered parser names, read at --help time (the registries fill as parsers land)."""
    if kind == "reasoning":
        from pagedllm.reasoning import REASONING_PARSERS as registry
    else:
        from pagedllm.entrypoints.openai.tool_parsers import TOOL_PARSERS as registry
    return ", ".join(registry.names()) or "none registered"


def check_parser_name(kind: str, name: str | None) -> None:
    """A --reasoning-parser / --tool-call-parser that names no parser: exit with the choices."""
    if name is None:
        return
    names = _names(kind)
    if name not in names.split(", "):
        flag = "--reasoning-parser" if kind == "reasoning" else "--tool-call-parser"
        raise SystemExit(f"pagedllm: {flag} {name!r} is unknown; choose from: {names}")


def _checked_json(parse: Callable[[str], Any]) -> Callable[[str], str]:
    """An argparse type that checks a JSON config flag now (a typo is a usage error, not an
    engine crash) and passes the text on; EngineArgs parses it."""

    def check(value: str) -> str:
        try:
            parse(value)
        except (ValueError, TypeError) as e:
            raise argparse.ArgumentTypeError(str(e)) from e
        return value

    return check


def _speculative_config(value: str) -> str:
    from pagedllm.config.speculative import SpeculativeConfig

    return _checked_json(SpeculativeConfig.parse)(value)


def _structured_config(value: str) -> str:
    from pagedllm.config.structured_outputs import StructuredOutputsConfig

    return _checked_json(StructuredOutputsConfig.parse)(value)


def engine_args_from(args: argparse.Namespace) -> EngineArgs:
    return EngineArgs(
        model=args.model,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        scheduling_policy=args.scheduling_policy,
        max_num_batched_tokens=args.max_num_batched_tokens,
        block_size=args.block_size,
        kv_cache_memory=args.kv_cache_memory,
        enable_prefix_caching=args.enable_prefix_caching,
        enable_chunked_prefill=args.enable_chunked_prefill,
        seed=args.seed,
        device=args.device,
        attention_backend=args.attention_backend,
        num_threads=args.num_threads,
        tensor_parallel_size=args.tensor_parallel_size,
        pipeline_parallel_size=args.pipeline_parallel_size,
        enable_expert_parallel=args.enable_expert_parallel,
        distributed_executor_backend=args.distributed_executor_backend,
        ray_address=args.ray_address,
        task=args.task,
        quantization=args.quantization,
        kv_cache_dtype=args.kv_cache_dtype,
        quantized_activation_dtype=args.quantized_activation_dtype,
        enforce_eager=args.enforce_eager,
        structured_outputs_config=args.structured_outputs_config,
        reasoning_parser=args.reasoning_parser,
        speculative_config=args.speculative_config,
        enable_lora=args.enable_lora,
        max_loras=args.max_loras,
        max_lora_rank=args.max_lora_rank,
        max_cpu_loras=args.max_cpu_loras,
        data_parallel_size=args.data_parallel_size,
        data_parallel_routing=args.data_parallel_routing,
        data_parallel_backend=args.data_parallel_backend,
        data_parallel_size_local=args.data_parallel_size_local,
        cpu_omp_threads_bind=args.cpu_omp_threads_bind,
        limit_mm_per_prompt=args.limit_mm_per_prompt,
        max_image_bytes=args.max_image_bytes,
        max_image_pixels=args.max_image_pixels,
        allowed_local_media_path=args.allowed_local_media_path,
        allowed_media_domains=args.allowed_media_domains,
        encoder_cache_size=args.encoder_cache_size,
    )
