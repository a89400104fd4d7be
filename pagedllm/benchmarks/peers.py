"""Peer engines run on the same token-id workload, in the same process and thread count, so every
result can be printed next to ours with a ratio.

    hf         HF transformers `generate`, greedy, static batches with left padding; loads the
               same checkpoint (a GGUF through `from_pretrained(dir, gguf_file=...)`, dequantized)
    llamacpp   llama-cpp-python (only when importable), one stream at a time, greedy, on the same
               GGUF file; HF directories have no GGUF and are skipped
    openvino   OpenVINO GenAI (only when importable) on the same GGUF file: its LLMPipeline one
               stream at a time (bench latency), its ContinuousBatchingPipeline with every request
               at once (bench throughput), at its CPU plugin's default precision and/or at ours
               (--openvino-precision default matched); see openvino_peer.py

A runner's generate_timed(prompts, output_lens) runs them all and returns the wall time and, where
the engine streams, each token's arrival time; every prompt produces exactly its output_len tokens
(EOS is suppressed), as ours do with ignore_eos.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pagedllm.benchmarks.datasets import MIN_TOKEN_ID
from pagedllm.benchmarks.openvino_peer import (
    PRECISION_MODES,
    OpenVINOPrecision,
    kv_cache_precision,
    make_openvino_runner,
    openvino_precision,
)
from pagedllm.benchmarks.peer_runner import BatchLimits, PeerRunner
from pagedllm.benchmarks.timing import TimedRun, TokenClock, check_lengths

if TYPE_CHECKING:
    from pagedllm.model_executor.model_loader.resolve import ModelSource

__all__ = ["BatchLimits", "PeerRunner"]  # re-exported: the runners' interface lives beside them

PEER_CHOICES = ("hf", "llamacpp", "openvino", "none")
LLAMACPP_MISSING = "llama-cpp-python not installed (pip install pagedllm[llamacpp]): skipped"
OPENVINO_MISSING = "openvino-genai not installed (pip install pagedllm[openvino]): skipped"


class HFRunner(PeerRunner):
    """transformers' `generate` over static batches of `batch_size`, left-padded; a batch runs
    until its longest output is done (the tokens past a request's own length are not counted)."""

    name = "hf_transformers"

    def __init__(self, source: ModelSource, dtype: str, batch_size: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
        torch_dtype = torch.float32 if dtype == "auto" else getattr(torch, dtype)
        self.model = AutoModelForCausalLM.from_pretrained(
            source.path, dtype=torch_dtype, **kwargs
        ).eval()
        config = self.model.config
        self.pad_id = config.pad_token_id if config.pad_token_id is not None else 0
        self.batch_size = batch_size

    def generate_timed(self, prompts: list[list[int]], output_lens: list[int]) -> TimedRun:
        clock = TokenClock(len(prompts))
        for i in range(0, len(prompts), self.batch_size):
            rows = range(i, min(i + self.batch_size, len(prompts)))
            self._generate_batch(
                [prompts[r] for r in rows], _HFTokenStamps(clock, rows, output_lens)
            )
        run = clock.finish()
        check_lengths(self.name, run, output_lens)
        return run

    def _generate_batch(self, prompts: list[list[int]], stamps: _HFTokenStamps) -> None:
        import torch
        from transformers import GenerationConfig

        new_tokens = stamps.new_tokens
        width = max(map(len, prompts))
        ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts])  # [B, width]
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=self.pad_id,
            eos_token_id=self.model.config.eos_token_id,
        )
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, generation_config=config,
                streamer=stamps.streamer(),
            )
        if out.shape[1] - width != new_tokens:
            raise RuntimeError(f"HF generated {out.shape[1] - width} tokens, not {new_tokens}")


class _HFTokenStamps:
    """Stamps the tokens of one static batch (rows of the clock) as HF's streamer hook sees
    them: `put` gets the prompt once, then each step's tokens of every row. A row's tokens past
    its own output_len (the batch runs to its longest) are not its output."""

    def __init__(self, clock: TokenClock, rows: range, output_lens: list[int]) -> None:
        self.clock, self.rows = clock, rows
        self.lens = [output_lens[r] for r in rows]
        self.new_tokens = max(self.lens)
        self.seen_prompt = False

    def put(self, _tokens: Any) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        for row, length in zip(self.rows, self.lens):
            if len(self.clock.times[row]) < length:
                self.clock.mark(row)

    def streamer(self) -> Any:
        """This object behind transformers' BaseStreamer interface (it checks the type)."""
        from transformers.generation.streamers import BaseStreamer

        stamps = self

        class Streamer(BaseStreamer):
            def put(self, value: Any) -> None:
                stamps.put(value)

            def end(self) -> None:
                pass

        return Streamer()


class LlamaCppRunner(PeerRunner):
    """llama-cpp-python's `Llama.generate` (an endless greedy token stream that we stop after
    output_len tokens, so EOS does not end it), one prompt after the other."""

    name = "llama_cpp"
    single_stream = True

    def __init__(self, gguf_path: str, n_threads: int, n_ctx: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(
            model_path=gguf_path,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            n_ctx=n_ctx,
            n_batch=min(n_ctx, 512),
            verbose=False,
        )

        self.path = gguf_path

    def generate_timed(self, prompts: list[list[int]], output_lens: list[int]) -> TimedRun:
        clock = TokenClock(len(prompts))
        for row, (prompt, output_len) in enumerate(zip(prompts, output_lens)):
            self._generate_one(prompt, output_len, clock, row)
        return clock.finish()

    def _generate_one(self, prompt: list[int], output_len: int, clock: TokenClock,
                      row: int) -> None:
        self.llm.reset()  # no KV reuse from the previous prompt
        count = 0
        for _ in self.llm.generate(
            prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True
        ):
            clock.mark(row)
            count += 1
            if count >= output_len:
                break

    def describe(self) -> dict[str, Any]:
        return {"pipeline": "llama_cpp.Llama.generate", "gguf": self.path}


# ---- selection -----------------------------------------------------------------------------------

GGUF_ONLY = {
    "llamacpp": ("llama.cpp", ""),
    "openvino": ("OpenVINO GenAI", " (it reads an HF directory only after optimum-intel exports "
                 "it to OpenVINO IR)"),
}  # fmt: skip
"""The peers that load only the GGUF file pagedllm runs: their name and a hint for the skip."""


def add_peer_args(parser: argparse.ArgumentParser, hf_batch_help: str) -> None:
    group = parser.add_argument_group("peers")
    group.add_argument(
        "--peers",
        nargs="+",
        default=None,
        choices=PEER_CHOICES,
        help="peer engines on the same workload: hf (transformers), llamacpp (llama-cpp-python), "
        "openvino (OpenVINO GenAI on the same GGUF: LLMPipeline for latency, "
        "ContinuousBatchingPipeline for throughput); default: hf, plus llamacpp and openvino "
        "when installed; none: only pagedllm",
    )
    group.add_argument("--hf-batch-size", type=int, default=None, help=hf_batch_help)
    group.add_argument(
        "--openvino-precision",
        nargs="+",
        default=["default"],
        choices=PRECISION_MODES,
        help="the precision OpenVINO runs at: default (its CPU plugin's defaults: K/V cache u8, "
        "f16 for an F32/F16 GGUF; activations dynamically quantized to int8 in groups of 32 where "
        "the CPU has VNNI), matched (pagedllm's: KV_CACHE_PRECISION from --kv-cache-dtype, auto "
        "-> the compute dtype (f32), fp16 -> f16, int8 -> u8, fp8 refused; dynamic quantization "
        "off for --quantized-activation-dtype int16, groups of 32 for int8; inference in the "
        "compute dtype), or both side by side (default matched; the matched one reports as "
        "openvino_genai_matched)",
    )


def check_peer_args(args: argparse.Namespace) -> None:
    """Refuses, before any engine loads, an --openvino-precision matched that the engine flags
    leave no OpenVINO equivalent for."""
    if "matched" in args.openvino_precision and (args.peers is None or "openvino" in args.peers):
        kv_cache_precision(args.kv_cache_dtype, "float32")  # the compute dtype cannot refuse


def llamacpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino_genai") is not None


def selected_peers(requested: list[str] | None) -> list[str]:
    """The peers to run; prints why a wanted one is skipped."""
    if requested is None:
        requested = ["hf", "llamacpp", "openvino"]
    if "none" in requested:
        if len(requested) > 1:
            raise ValueError("--peers none cannot be combined with other peers")
        return []
    names = list(dict.fromkeys(requested))
    for name, available, missing in (
        ("llamacpp", llamacpp_available, LLAMACPP_MISSING),
        ("openvino", openvino_available, OPENVINO_MISSING),
    ):
        if name in names and not available():
            print(missing, flush=True)
            names.remove(name)
    return names


def note_weights(peer_names: list[str], quantization: str | None) -> None:
    """HF dequantizes a GGUF to float, OpenVINO keeps its quantized weights: say so when the
    precision differs from our engine's."""
    if "hf" in peer_names and quantization is not None:
        print(
            f"note: pagedllm runs {quantization} weights, HF transformers float ones "
            "(--quantization none runs both on float weights)",
            flush=True,
        )
    if "openvino" in peer_names and quantization is None:
        print(
            "note: pagedllm runs float weights, OpenVINO GenAI the GGUF's own (quantized) ones",
            flush=True,
        )


def make_peer(
    name: str,
    source: ModelSource,
    dtype: str,
    hf_batch_size: int,
    n_ctx: int,
    quantization: str | None = "gguf",
    batch_limits: BatchLimits | None = None,
    openvino: OpenVINOPrecision | None = None,
) -> PeerRunner | None:
    """The runner, or None (with the reason printed) when the model does not suit it.

    quantization: what pagedllm runs; None (float weights) gives llama.cpp the same GGUF
    converted to F32 by llama.cpp itself, so both run the same precision.
    batch_limits: None for bench latency (OpenVINO's single-stream LLMPipeline); our engine's
    scheduler limits for the offline workload (its ContinuousBatchingPipeline, batching alike).
    openvino: the precision OpenVINO runs at (None: its plugin's defaults).
    """
    if name == "hf":
        return HFRunner(source, dtype, hf_batch_size)
    if source.gguf_file is None:
        label, hint = GGUF_ONLY[name]
        print(
            f"{label} needs a GGUF model, {source.name or source.path} is not one: skipped{hint}",
            flush=True,
        )
        return None
    if name == "openvino":
        return make_openvino_runner(source.file, _threads(), batch_limits, openvino)
    float_weights = quantization is None and dtype in _LLAMA_CPP_FLOAT_TYPES
    path = llama_cpp_weights(source.file, float32=float_weights and dtype == "float32",
                             dtype=dtype if float_weights else None)  # fmt: skip
    print(f"llama.cpp runs {os.path.basename(path)}", flush=True)
    return LlamaCppRunner(path, _threads(), n_ctx)


def make_peers(
    requested: list[str] | None,
    source: ModelSource,
    model_config: Any,
    hf_batch_size: int,
    n_ctx: int,
    batch_limits: BatchLimits | None = None,
    openvino_precisions: Sequence[str] = ("default",),
    kv_cache_dtype: str = "auto",
) -> list[PeerRunner]:
    """The runners of the requested peers (see selected_peers) that suit the model, for a
    pagedllm engine running `model_config` (its dtype and quantization) with `kv_cache_dtype`:
    OpenVINO once per --openvino-precision mode."""
    names = selected_peers(requested)
    note_weights(names, model_config.quantization)
    wanted: list[tuple[str, OpenVINOPrecision | None]] = []
    for name in names:
        if name != "openvino":
            wanted.append((name, None))
            continue
        for mode in dict.fromkeys(openvino_precisions):
            wanted.append((name, openvino_precision(
                mode, model_config.compute_dtype, kv_cache_dtype,
                model_config.quantized_activation_dtype)))  # fmt: skip
    peers = []
    for name, precision in wanted:
        try:
            peers.append(make_peer(name, source, model_config.dtype, hf_batch_size, n_ctx,
                                   model_config.quantization, batch_limits,
                                   precision))  # fmt: skip
        except RuntimeError as exc:  # e.g. OpenVINO GenAI's GGUF reader on an architecture
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            print(f"{name} could not load {os.path.basename(source.file or source.path)} "
                  f"({first_line}): skipped", flush=True)  # fmt: skip
    return [p for p in peers if p is not None]


def llama_cpp_weights(gguf: str, float32: bool, dtype: str | None = None) -> str:
    """The GGUF llama.cpp runs next to pagedllm: the file itself, or its F32 (BF16, F16) copy
    when pagedllm runs float32 (bfloat16, float16) weights, both then holding the same weights
    (`dtype` names the half ones; float32 alone keeps the older callers' meaning)."""
    if dtype is not None and dtype != "float32":
        return float_gguf(gguf, dtype)
    return float_gguf(gguf, "float32") if float32 else gguf


def add_kv_precision_arg(parser: argparse.ArgumentParser) -> None:
    """--kv-cache-dtype for the scripts that run llama.cpp's own programs: both engines keep K/V
    at the same precision (see llama_cpp_kv_type)."""
    parser.add_argument("--kv-cache-dtype", default="fp16", choices=["fp16", "auto"],
                        help="K/V precision of both engines: fp16 (llama.cpp's default) or auto "
                        "(pagedllm: the model dtype, float32; llama.cpp: f32)")  # fmt: skip


def llama_cpp_kv_type(kv_cache_dtype: str) -> str:
    """llama.cpp's -ctk/-ctv value for pagedllm's --kv-cache-dtype fp16 | auto (float32)."""
    return "f16" if kv_cache_dtype == "fp16" else "f32"


def llama_cpp_program(name: str) -> str | None:
    """A llama.cpp program that llama-cpp-python does not ship (llama-server,
    llama-batched-bench): the one scripts/build_llama_server.sh built, else one on PATH."""
    from pagedllm import envs

    built = os.path.join(envs.kernel_cache_dir(), "llama.cpp", name)
    return built if os.path.exists(built) else shutil.which(name)


_LLAMA_CPP_FLOAT_TYPES = {"float32": ("F32", "LLAMA_FTYPE_ALL_F32"),
                          "bfloat16": ("BF16", "LLAMA_FTYPE_MOSTLY_BF16"),
                          "float16": ("F16", "LLAMA_FTYPE_MOSTLY_F16")}  # fmt: skip


def float_gguf(path: str, dtype: str) -> str:
    """`path` with its tensors in `dtype` (F32, BF16, F16), written once by llama.cpp's own
    quantizer into the pagedllm cache (llama.cpp's float baseline for a model shipped
    quantized)."""
    import llama_cpp

    from pagedllm import envs

    suffix, ftype = _LLAMA_CPP_FLOAT_TYPES[dtype]
    out_dir = os.path.join(envs.kernel_cache_dir(), "peers")
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, os.path.basename(path).removesuffix(".gguf") + f".{suffix}.gguf")
    if not os.path.exists(out):
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, ftype)
        params.allow_requantize = True
        params.nthread = _threads()
        tmp = out + ".tmp"
        if llama_cpp.llama_model_quantize(path.encode(), tmp.encode(), params) != 0:
            raise RuntimeError(f"llama.cpp could not convert {path} to {suffix}")
        os.replace(tmp, out)
    return out


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def warm_up(runner: Any, prompt_len: int) -> None:
    """One short generation so one-off costs (allocations, first kernel runs) are not timed; its
    prompt is not one of the workload's (so no prefix cache hit comes of it)."""
    runner.generate([[MIN_TOKEN_ID + i % 50 for i in range(prompt_len)]], [2])
