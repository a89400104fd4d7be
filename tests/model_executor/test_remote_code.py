"""trust_remote_code audit: a model folder's own Python code (auto_map in config.json or
tokenizer_config.json) is never imported. A model that needs it is refused with a message that
says why; a known architecture that merely ships such code loads without running it. The code
in these folders writes a marker file when imported: it must never appear."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from pagedllm.model_executor.model_loader.config import load_hf_config
from pagedllm.model_executor.model_loader.resolve import ModelSource

EVIL = """import pathlib
pathlib.Path(__file__).with_name("EXECUTED").write_text("remote code ran")
from transformers import PretrainedConfig, PreTrainedTokenizerFast
class EvilConfig(PretrainedConfig):
    model_type = "evil"
class EvilTokenizer(PreTrainedTokenizerFast):
    pass
"""


def _folder(src: str, dst: str, config: dict | None = None, tokenizer: dict | None = None) -> str:
    shutil.copytree(src, dst)
    with open(os.path.join(dst, "evil.py"), "w") as f:
        f.write(EVIL)
    for name, update in (("config.json", config), ("tokenizer_config.json", tokenizer)):
        if update is not None:
            path = os.path.join(dst, name)
            with open(path) as f:
                data = json.load(f)
            data.update(update)
            with open(path, "w") as f:
                json.dump(data, f)
    return dst


def _ran(folder: str) -> bool:
    return os.path.exists(os.path.join(folder, "EXECUTED"))


def test_unknown_architecture_with_remote_code_is_refused(tiny_llama_dir, tmp_path):
    folder = _folder(tiny_llama_dir, str(tmp_path / "m"), config={
        "model_type": "evil", "architectures": ["EvilForCausalLM"],
        "auto_map": {"AutoConfig": "evil.EvilConfig"}})
    with pytest.raises(ValueError, match="never runs code from a model folder"):
        load_hf_config(ModelSource("hf", folder, None, "m"))
    assert not _ran(folder)


def test_known_architecture_loads_without_its_remote_code(tiny_llama_dir, tmp_path):
    folder = _folder(tiny_llama_dir, str(tmp_path / "m"), config={
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.Evil"}})
    config = load_hf_config(ModelSource("hf", folder, None, "m"))
    assert type(config).__name__ == "LlamaConfig"
    assert not _ran(folder)


def test_remote_code_tokenizer_is_refused(tiny_llama_dir, tmp_path):
    from pagedllm.tokenizer.loader import load_tokenizer

    folder = _folder(tiny_llama_dir, str(tmp_path / "m"), tokenizer={
        "tokenizer_class": "EvilTokenizer",
        "auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]}})
    with pytest.raises(ValueError, match="never runs code from a model folder"):
        load_tokenizer(ModelSource("hf", folder, None, "m"))
    assert not _ran(folder)


def test_trust_remote_code_flag_is_accepted_and_ignored():
    import argparse

    from pagedllm.entrypoints.cli.hardening_flags import add_hardening_args

    parser = argparse.ArgumentParser()
    add_hardening_args(parser)
    assert parser.parse_args(["--trust-remote-code"]).trust_remote_code is True
    assert "ignored" in parser.format_help()
