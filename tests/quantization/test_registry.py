"""Resolving --quantization against the checkpoint, the build-time scope, and the CLI flags."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import pytest

from pagedllm.model_executor.quantization.registry import (
    QUANTIZATION_METHODS,
    resolve_quantization,
)
from pagedllm.model_executor.quantization.scope import quantization_scope, scoped_quant_method

HF = SimpleNamespace()  # a config without quantization_config
AWQ = SimpleNamespace(quantization_config={"quant_method": "awq", "bits": 4, "group_size": 32})


def test_registry_names_every_method():
    assert QUANTIZATION_METHODS.names() == ["awq", "gguf", "gptq", "int4", "int8"]
    for name in QUANTIZATION_METHODS.names():
        assert QUANTIZATION_METHODS.get(name).name == name


@pytest.mark.parametrize(
    "requested, fmt, hf, gguf_quantized, expected",
    [
        (None, "gguf", HF, True, "gguf"),  # quantized GGUF runs natively by default
        ("auto", "gguf", HF, True, "gguf"),
        ("none", "gguf", HF, True, None),  # ... unless asked to dequantize
        ("dequantize", "gguf", HF, True, None),
        ("int8", "gguf", HF, True, "int8"),  # dequantize, then int8
        (None, "hf", HF, False, None),
        ("int4", "hf", HF, False, "int4"),
        (None, "hf", AWQ, False, "awq"),
        ("AWQ", "hf", AWQ, False, "awq"),
    ],
)
def test_resolve(requested, fmt, hf, gguf_quantized, expected):
    assert resolve_quantization(requested, fmt, hf, gguf_quantized) == expected


@pytest.mark.parametrize(
    "requested, fmt, hf, gguf_quantized, match",
    [
        ("gguf", "hf", HF, False, "needs a gguf checkpoint"),
        ("gptq", "hf", AWQ, False, "needs a gptq checkpoint"),
        ("none", "hf", AWQ, False, "needs quantization='awq'"),
        ("int8", "hf", AWQ, False, "cannot re-quantize"),
        ("fp4", "hf", HF, False, "quantization must be one of"),
    ],
)
def test_resolve_refusals(requested, fmt, hf, gguf_quantized, match):
    with pytest.raises(ValueError, match=match):
        resolve_quantization(requested, fmt, hf, gguf_quantized)


def test_unsupported_checkpoint_method_is_named():
    hf = SimpleNamespace(quantization_config={"quant_method": "bitsandbytes"})
    with pytest.raises(ValueError, match="bitsandbytes"):
        resolve_quantization(None, "hf", hf, False)


def test_scope_hands_out_methods_and_refuses_nesting():
    from pagedllm.model_executor.layers.linear import ReplicatedLinear, UnquantizedLinearMethod
    from pagedllm.model_executor.quantization.weight_only_int8 import Int8Config, Int8LinearMethod

    assert isinstance(ReplicatedLinear(32, 16).quant_method, UnquantizedLinearMethod)
    with quantization_scope(Int8Config()):
        assert isinstance(ReplicatedLinear(32, 16).quant_method, Int8LinearMethod)
        with pytest.raises(RuntimeError, match="nest"), quantization_scope(Int8Config()):
            pass
    assert scoped_quant_method(ReplicatedLinear(32, 16), "") is None  # reset after the scope


def test_cli_flags_reach_engine_args():
    from pagedllm.entrypoints.cli.engine_flags import add_engine_args, engine_args_from

    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    add_engine_args(parser)
    args = parser.parse_args(["--quantization", "int8", "--kv-cache-dtype", "int8"])
    engine_args = engine_args_from(args)
    assert (engine_args.quantization, engine_args.kv_cache_dtype) == ("int8", "int8")
