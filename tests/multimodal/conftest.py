"""A tiny random LLaVA-1.5 (CLIP tower 2 layers x 32 wide on 28x28 images in 7x7 patches: 16
image tokens; the tiny Llama as its decoder) with its processor, and a few random images."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

IMAGE_TOKEN = "<image>"


def _llava_parts(tiny_tokenizer_dir: str):
    """LLaVA-1.5's and LLaVA-NeXT's tokenizer (with <image>), tiny Llama decoder config and CLIP
    tower config (3 layers x 32 wide on 28x28 images in 7x7 patches)."""
    from transformers import AutoTokenizer, CLIPVisionConfig, LlamaConfig

    from tests.conftest import TINY_LLAMA

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    text = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       **TINY_LLAMA)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                              num_attention_heads=4, image_size=28, patch_size=7,
                              projection_dim=32)
    return tokenizer, text, vision


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory, tiny_tokenizer_dir) -> str:
    import torch
    from transformers import (
        CLIPImageProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    directory = str(tmp_path_factory.mktemp("tiny_llava"))
    tokenizer, text, vision = _llava_parts(tiny_tokenizer_dir)
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


QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.fixture(scope="session")
def tiny_qwen2_vl_dir(tmp_path_factory, tiny_tokenizer_dir) -> str:
    """A tiny random Qwen2-VL: tower 2 blocks x 32 wide on 7x7 patches merged 2x2 (a 40x50 image
    is a 6x8 patch grid: 12 tokens), mrope_section [2, 3, 3] over the tiny decoder's 16-dim
    heads; the PIL image processor (no torchvision) bounded to 28x28..56x56 pixels."""
    import torch
    from transformers import AutoTokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    from tests.conftest import TINY_LLAMA

    directory = str(tmp_path_factory.mktemp("tiny_qwen2_vl"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tokenizer.add_tokens(["<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                          "<|video_pad|>"], special_tokens=True)
    text = dict(TINY_LLAMA, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                 "mrope_section": [2, 3, 3]})
    vision = dict(depth=2, embed_dim=32, hidden_size=TINY_LLAMA["hidden_size"], num_heads=4,
                  mlp_ratio=2, patch_size=7, spatial_merge_size=2, temporal_patch_size=2)
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"),
        ("vision_end_token_id", "<|vision_end|>"))}
    config = Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False,
                           **ids)
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config).to(torch.float32)
    _perturb(model, ("visual",))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    Qwen2VLImageProcessorPil(patch_size=7, merge_size=2, temporal_patch_size=2,
                             min_pixels=28 * 28, max_pixels=56 * 56).save_pretrained(directory)
    return directory


def _perturb(model, vision_prefixes: tuple[str, ...]) -> None:
    """Non-trivial norms and biases, and vision weights large enough to move the tokens, so a
    mix-up shows."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or "layer_norm" in name or "ln_q" in name or \
                    "norm1" in name or "norm2" in name:
                param.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                param.normal_(0.0, 0.1)
            elif any(prefix in name for prefix in vision_prefixes):
                param.normal_(0.0, 0.2)


def hf_qwen2_vl_greedy(model_dir: str, hf, prompt_ids: list[int], images: list,
                       max_tokens: int) -> list[int]:
    """HF transformers' greedy tokens (fp32) for an expanded prompt: a full forward per token,
    so HF's own get_rope_index makes every position and no EOS handling intervenes (the engine
    runs with ignore_eos)."""
    kwargs = _processed(model_dir, images, ("pixel_values", "image_grid_thw"))
    return _greedy_full_forwards(hf, prompt_ids, max_tokens, kwargs, lambda ids: {
        "mm_token_type_ids": (ids == hf.config.image_token_id).int()})


def _processed(model_dir: str, images: list, keys: tuple[str, ...], **options) -> dict:
    """The image processor's tensors named `keys` for the images ({} for none)."""
    from transformers import AutoImageProcessor

    if not images:
        return {}
    processed = AutoImageProcessor.from_pretrained(model_dir)(images=images, return_tensors="pt",
                                                              **options)
    return {key: processed[key] for key in keys}


def _greedy_full_forwards(hf, prompt_ids: list[int], max_tokens: int, kwargs: dict,
                          per_step=lambda ids: {}) -> list[int]:
    """HF's greedy tokens by a full forward per token (fp32; no EOS handling, as the engine runs
    with ignore_eos): kwargs go to every forward, per_step(ids) adds what depends on the ids."""
    import torch

    sequence = list(prompt_ids)
    with torch.no_grad():
        for _ in range(max_tokens):
            ids = torch.tensor([sequence])
            logits = hf(input_ids=ids, **kwargs, **per_step(ids)).logits[0, -1]
            sequence.append(int(logits.argmax()))
    return sequence[len(prompt_ids):]


@pytest.fixture(scope="session")
def tiny_llava_next_dir(tmp_path_factory, tiny_tokenizer_dir) -> str:
    """A tiny random LLaVA-NeXT: LLaVA's CLIP tower (28x28 tiles of 7x7 patches: 16 tokens a
    tile) with grid pinpoints 28x56, 56x28 and 56x56, so images of different shapes take
    different grids and unpadding."""
    import torch
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration
    from transformers.models.llava_next.image_processing_pil_llava_next import (
        LlavaNextImageProcessorPil,
    )

    directory = str(tmp_path_factory.mktemp("tiny_llava_next"))
    tokenizer, text, vision = _llava_parts(tiny_tokenizer_dir)
    pinpoints = [[28, 56], [56, 28], [56, 56]]
    config = LlavaNextConfig(vision_config=vision, text_config=text,
                             image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                             vision_feature_layer=-2, vision_feature_select_strategy="default",
                             image_grid_pinpoints=pinpoints)
    torch.manual_seed(0)
    model = LlavaNextForConditionalGeneration(config).to(torch.float32)
    _perturb(model, ("vision_tower", "projector", "image_newline"))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    LlavaNextImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                               image_grid_pinpoints=pinpoints).save_pretrained(directory)
    return directory


def hf_llava_next_greedy(model_dir: str, hf, prompt_ids: list[int], images: list,
                         max_tokens: int) -> list[int]:
    """HF transformers' greedy tokens (fp32), a full forward per token (no EOS handling)."""
    kwargs = _processed(model_dir, images, ("pixel_values", "image_sizes"))
    return _greedy_full_forwards(hf, prompt_ids, max_tokens, kwargs)


def _save_dual_encoder(directory: str, tiny_tokenizer_dir: str, kind: str) -> str:
    """A tiny random CLIPModel or SiglipModel (towers 2 layers x 32 wide, 28x28 images in 7x7
    patches) with the tiny tokenizer and the family's image processor."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4)
    text = dict(tower, vocab_size=len(tokenizer), max_position_embeddings=64,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    vision = dict(tower, image_size=28, patch_size=7)
    if kind == "clip":
        from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

        config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
        model_cls = CLIPModel
        processor = CLIPImageProcessor(size={"shortest_edge": 28},
                                       crop_size={"height": 28, "width": 28})
    else:
        from transformers import SiglipConfig, SiglipModel
        from transformers.models.siglip.image_processing_pil_siglip import (
            SiglipImageProcessorPil,
        )

        config = SiglipConfig(text_config=dict(text, projection_size=24), vision_config=vision)
        model_cls = SiglipModel
        processor = SiglipImageProcessorPil(size={"height": 28, "width": 28})
    torch.manual_seed(0)
    model = model_cls(config).to(torch.float32)
    _perturb(model, ("vision_model", "probe"))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory, tiny_tokenizer_dir) -> str:
    return _save_dual_encoder(str(tmp_path_factory.mktemp("tiny_clip")), tiny_tokenizer_dir,
                              "clip")


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory, tiny_tokenizer_dir) -> str:
    return _save_dual_encoder(str(tmp_path_factory.mktemp("tiny_siglip")), tiny_tokenizer_dir,
                              "siglip")


def hf_dual_encoder_features(model_dir: str, texts: list[str], images: list):
    """HF's get_text_features (each text alone, no padding) and get_image_features, fp32."""
    import torch
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        text = [model.get_text_features(input_ids=torch.tensor([tokenizer.encode(t)]))
                for t in texts]
        pixels = AutoImageProcessor.from_pretrained(model_dir)(images=images,
                                                               return_tensors="pt")
        image = model.get_image_features(pixel_values=pixels["pixel_values"])
    text = [getattr(t, "pooler_output", t)[0] for t in text]
    image = getattr(image, "pooler_output", image)
    return text, list(image)


INTERNVL_IMAGE = "<img><IMG_CONTEXT></img>"


@pytest.fixture(scope="session")
def tiny_internvl_dir(tmp_path_factory, tiny_tokenizer_dir) -> str:
    """A tiny random InternVL (transformers' format): InternViT 2 layers x 32 wide with q/k
    norms on 28x28 tiles of 7x7 patches, pixel-shuffled to 4 tokens a tile; up to 4 tiles plus
    a thumbnail; the tiny Qwen2 decoder."""
    import torch
    from transformers import AutoTokenizer, InternVLConfig, InternVLForConditionalGeneration
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
        GotOcr2ImageProcessorPil,
    )

    from tests.conftest import TINY_LLAMA

    directory = str(tmp_path_factory.mktemp("tiny_internvl"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tokenizer.add_tokens(["<img>", "</img>", "<IMG_CONTEXT>"], special_tokens=True)
    text = dict(TINY_LLAMA, model_type="qwen2", vocab_size=len(tokenizer),
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, image_size=[28, 28], patch_size=[7, 7],
                  use_qk_norm=True, layer_scale_init_value=0.5)
    config = InternVLConfig(vision_config=vision, text_config=text, image_seq_length=4,
                            image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"))
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(config).to(torch.float32)
    _perturb(model, ("vision_tower", "projector"))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    GotOcr2ImageProcessorPil(size={"height": 28, "width": 28}, crop_to_patches=True,
                             min_patches=1, max_patches=4).save_pretrained(directory)
    return directory


def hf_internvl_greedy(model_dir: str, hf, prompt_ids: list[int], images: list,
                       max_tokens: int) -> list[int]:
    """HF transformers' greedy tokens (fp32), a full forward per token (no EOS handling)."""
    kwargs = _processed(model_dir, images, ("pixel_values",), crop_to_patches=True)
    return _greedy_full_forwards(hf, prompt_ids, max_tokens, kwargs)


def assert_prompt_logprobs_match(llm, prompt: dict, hf_logits, tolerance: float = 1e-4) -> None:
    """Every prompt position's top-2 log-probabilities from the engine (prefill chunked through
    the image rows) within `tolerance` of HF's (hf_logits(prompt ids) -> [S, vocab]): what
    greedy tokens could hide (a permutation of an image's rows, say)."""
    import torch

    from pagedllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=2)
    (out,) = llm.generate([prompt], params, use_tqdm=False)
    with torch.no_grad():
        reference = torch.log_softmax(hf_logits(out.prompt_token_ids).float(), dim=-1)
    checked = 0
    for position, entry in enumerate(out.prompt_logprobs[1:]):  # position predicts position+1
        for token, logprob in entry.items():
            assert abs(logprob.logprob - reference[position, token].item()) < tolerance, position
            checked += 1
    assert checked >= 2 * (len(out.prompt_token_ids) - 1)
