"""A tiny random LLaVA-1.5 (CLIP tower 2 layers x 32 wide on 28x28 images in 7x7 patches: 16
image tokens; the tiny Llama as its decoder) with its processor, and a few random images."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

IMAGE_TOKEN = "<image>"


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory, tiny_tokenizer_dir) -> str:
    import torch
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from tests.conftest import TINY_LLAMA

    directory = str(tmp_path_factory.mktemp("tiny_llava"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    text = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       **TINY_LLAMA)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                              num_attention_heads=4, image_size=28, patch_size=7,
                              projection_dim=32)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         image_seq_length=16)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).to(torch.float32)
    with torch.no_grad():  # non-trivial norms and biases, so a mix-up shows
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or "layer_norm" in name or "layrnorm" in name:
                param.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                param.normal_(0.0, 0.1)
            elif "vision_tower" in name or "projector" in name:
                param.normal_(0.0, 0.2)  # image features large enough to move the tokens
    model.save_pretrained(directory)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 28},
                                         crop_size={"height": 28, "width": 28})
    LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=7,
                   num_additional_image_tokens=1,
                   vision_feature_select_strategy="default").save_pretrained(directory)
    return directory


def random_image(seed: int, size: tuple[int, int] = (40, 50)):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


def hf_llava_greedy(model_dir: str, hf, prompt_ids: list[int], images: list,
                    max_tokens: int) -> list[int]:
    """HF transformers' greedy tokens for an already expanded prompt and its images (fp32)."""
    import torch
    from transformers import AutoImageProcessor

    kwargs = {}
    if images:
        processor = AutoImageProcessor.from_pretrained(model_dir)
        kwargs["pixel_values"] = processor(images=images, return_tensors="pt")["pixel_values"]
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                          max_new_tokens=max_tokens, min_new_tokens=max_tokens, **kwargs)
    return out[0, len(prompt_ids):].tolist()
