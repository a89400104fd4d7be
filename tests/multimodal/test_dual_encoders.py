"""CLIP and SigLIP served for embeddings (LLM.embed), against HF transformers fp32: text
prompts equal get_text_features, image prompts ({"prompt": "", "multi_modal_data": ...})
equal get_image_features, within 1e-5 raw and L2-normalized by default."""

from __future__ import annotations

import pytest
import torch

from pagedllm import LLM, PoolingParams
from tests.multimodal.conftest import hf_dual_encoder_features, random_image

TEXTS = ["a photo of a cat", "two dogs playing in the snow, far away"]


@pytest.mark.parametrize("fixture", ["tiny_clip_dir", "tiny_siglip_dir"])
def test_text_and_image_embeddings_match_hf(request, fixture):
    model_dir = request.getfixturevalue(fixture)
    images = [random_image(1), random_image(2, (64, 30))]
    text_ref, image_ref = hf_dual_encoder_features(model_dir, TEXTS, images)
    llm = LLM(model_dir)
    prompts = [*TEXTS, *({"prompt": "", "multi_modal_data": {"image": im}} for im in images)]
    raw = llm.embed(prompts, PoolingParams(normalize=False), use_tqdm=False)
    normalized = llm.embed(prompts, use_tqdm=False)
    for out, norm, ref in zip(raw, normalized, [*text_ref, *image_ref]):
        got = torch.tensor(out.outputs.embedding)
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.tensor(norm.outputs.embedding),
                                   torch.nn.functional.normalize(ref, dim=0),
                                   atol=1e-5, rtol=1e-5)
    # the two towers and both images differ (nothing shared by mistake)
    assert not torch.allclose(image_ref[0], image_ref[1])
    with pytest.raises(ValueError, match="either text or one image"):
        llm.embed({"prompt": "text", "multi_modal_data": {"image": images[0]}},
                  use_tqdm=False)
    with pytest.raises(ValueError, match="exactly one image"):
        llm.embed({"prompt": "", "multi_modal_data": {"image": images}}, use_tqdm=False)
