"""HF architecture name -> our model class, imported only when that architecture is used."""

from __future__ import annotations

from torch import nn

from pagedllm.utils.registry import Registry

MODEL_REGISTRY = Registry("model architecture")
_MODELS = "pagedllm.model_executor.models"
MODEL_REGISTRY.register("LlamaForCausalLM", f"{_MODELS}.llama", "LlamaForCausalLM")
# Mistral is Llama with a sliding window on every layer (config.sliding_window).
MODEL_REGISTRY.register("MistralForCausalLM", f"{_MODELS}.llama", "LlamaForCausalLM")
MODEL_REGISTRY.register("Qwen2ForCausalLM", f"{_MODELS}.qwen2", "Qwen2ForCausalLM")
MODEL_REGISTRY.register("Qwen3ForCausalLM", f"{_MODELS}.qwen3", "Qwen3ForCausalLM")
MODEL_REGISTRY.register("GemmaForCausalLM", f"{_MODELS}.gemma", "GemmaForCausalLM")
MODEL_REGISTRY.register("Gemma2ForCausalLM", f"{_MODELS}.gemma2", "Gemma2ForCausalLM")
MODEL_REGISTRY.register("Gemma3ForCausalLM", f"{_MODELS}.gemma3", "Gemma3ForCausalLM")
MODEL_REGISTRY.register("GPT2LMHeadModel", f"{_MODELS}.gpt2", "GPT2LMHeadModel")
MODEL_REGISTRY.register("GPTNeoXForCausalLM", f"{_MODELS}.gpt_neox", "GPTNeoXForCausalLM")
MODEL_REGISTRY.register("OPTForCausalLM", f"{_MODELS}.opt", "OPTForCausalLM")
MODEL_REGISTRY.register("Phi3ForCausalLM", f"{_MODELS}.phi3", "Phi3ForCausalLM")
MODEL_REGISTRY.register("GraniteForCausalLM", f"{_MODELS}.granite", "GraniteForCausalLM")
MODEL_REGISTRY.register("GraniteMoeForCausalLM", f"{_MODELS}.granitemoe", "GraniteMoeForCausalLM")
MODEL_REGISTRY.register("Olmo2ForCausalLM", f"{_MODELS}.olmo2", "Olmo2ForCausalLM")
MODEL_REGISTRY.register("StableLmForCausalLM", f"{_MODELS}.stablelm", "StableLmForCausalLM")
MODEL_REGISTRY.register("PhiForCausalLM", f"{_MODELS}.phi", "PhiForCausalLM")
MODEL_REGISTRY.register("GPTJForCausalLM", f"{_MODELS}.gptj", "GPTJForCausalLM")
MODEL_REGISTRY.register("CohereForCausalLM", f"{_MODELS}.cohere", "CohereForCausalLM")
MODEL_REGISTRY.register("GPTBigCodeForCausalLM", f"{_MODELS}.gpt_bigcode", "GPTBigCodeForCausalLM")
MODEL_REGISTRY.register("FalconForCausalLM", f"{_MODELS}.falcon", "FalconForCausalLM")
MODEL_REGISTRY.register("InternLM2ForCausalLM", f"{_MODELS}.internlm2", "InternLM2ForCausalLM")
MODEL_REGISTRY.register("GlmForCausalLM", f"{_MODELS}.glm4", "GlmForCausalLM")
MODEL_REGISTRY.register("Glm4ForCausalLM", f"{_MODELS}.glm4", "Glm4ForCausalLM")
MODEL_REGISTRY.register("BloomForCausalLM", f"{_MODELS}.bloom", "BloomForCausalLM")
MODEL_REGISTRY.register("MixtralForCausalLM", f"{_MODELS}.mixtral", "MixtralForCausalLM")
MODEL_REGISTRY.register("Qwen2MoeForCausalLM", f"{_MODELS}.qwen2_moe", "Qwen2MoeForCausalLM")
MODEL_REGISTRY.register("Qwen3MoeForCausalLM", f"{_MODELS}.qwen3_moe", "Qwen3MoeForCausalLM")
MODEL_REGISTRY.register("DeepseekV2ForCausalLM", f"{_MODELS}.deepseek_v2", "DeepseekV2ForCausalLM")
MODEL_REGISTRY.register("DeepseekV3ForCausalLM", f"{_MODELS}.deepseek_v2", "DeepseekV3ForCausalLM")
MODEL_REGISTRY.register("DbrxForCausalLM", f"{_MODELS}.dbrx", "DbrxForCausalLM")
MODEL_REGISTRY.register("Glm4MoeForCausalLM", f"{_MODELS}.glm4_moe", "Glm4MoeForCausalLM")
# Hybrid state-space: Mamba layers (their states in a per-request state cache) among attention.
MODEL_REGISTRY.register("JambaForCausalLM", f"{_MODELS}.jamba", "JambaForCausalLM")
MODEL_REGISTRY.register("MambaForCausalLM", f"{_MODELS}.mamba", "MambaForCausalLM")
MODEL_REGISTRY.register("Mamba2ForCausalLM", f"{_MODELS}.mamba", "Mamba2ForCausalLM")
MODEL_REGISTRY.register("FalconMambaForCausalLM", f"{_MODELS}.mamba", "FalconMambaForCausalLM")
MODEL_REGISTRY.register("BambaForCausalLM", f"{_MODELS}.bamba", "BambaForCausalLM")
MODEL_REGISTRY.register("GraniteMoeHybridForCausalLM", f"{_MODELS}.granitemoehybrid",
                        "GraniteMoeHybridForCausalLM")
# Vision-language: a CLIP tower + projector whose image embeddings replace placeholder tokens.
MODEL_REGISTRY.register("LlavaForConditionalGeneration", f"{_MODELS}.llava",
                        "LlavaForConditionalGeneration")
MODEL_REGISTRY.register("LlavaNextForConditionalGeneration", f"{_MODELS}.llava_next",
                        "LlavaNextForConditionalGeneration")
MODEL_REGISTRY.register("InternVLForConditionalGeneration", f"{_MODELS}.internvl",
                        "InternVLForConditionalGeneration")
MODEL_REGISTRY.register("Qwen2VLForConditionalGeneration", f"{_MODELS}.qwen2_vl",
                        "Qwen2VLForConditionalGeneration")

# Encoder-decoders: the prompt is encoded once per request, the decoder generates.
MODEL_REGISTRY.register("BartForConditionalGeneration", f"{_MODELS}.bart",
                        "BartForConditionalGeneration")
MODEL_REGISTRY.register("T5ForConditionalGeneration", f"{_MODELS}.t5",
                        "T5ForConditionalGeneration")

ENCODER_DECODER_ARCHITECTURES = frozenset({"BartForConditionalGeneration",
                                           "T5ForConditionalGeneration"})
"""Native encoder-decoders (ModelConfig.is_encoder_decoder)."""

MLA_ARCHITECTURES = frozenset({"DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM"})
"""Native architectures whose attention is multi-head latent attention: their KV cache holds the
latent (see ModelConfig.use_mla)."""

# Encoder-only embedding models: bidirectional attention, no KV cache, task "embed" only.
EMBEDDING_MODEL_REGISTRY = Registry("embedding model architecture")
EMBEDDING_MODEL_REGISTRY.register("BertModel", f"{_MODELS}.bert", "BertModel")
# RoBERTa is BERT with positions counted from padding_idx + 1 (and one token type).
EMBEDDING_MODEL_REGISTRY.register("RobertaModel", f"{_MODELS}.bert", "RobertaModel")
EMBEDDING_MODEL_REGISTRY.register("XLMRobertaModel", f"{_MODELS}.bert", "RobertaModel")
# Dual encoders: a text prompt gets the text tower's embedding, an image prompt the vision
# tower's (multimodal/dual_encoder.py); PoolingRunner calls their `embed_prompt`.
EMBEDDING_MODEL_REGISTRY.register("CLIPModel", f"{_MODELS}.clip", "CLIPModel")
EMBEDDING_MODEL_REGISTRY.register("SiglipModel", f"{_MODELS}.siglip", "SiglipModel")

# Encoder-only sequence classifiers (and cross-encoders: one label scoring a text pair), task
# "classify" only, on the same pooling core.
CLASSIFIER_MODEL_REGISTRY = Registry("sequence classification architecture")
CLASSIFIER_MODEL_REGISTRY.register("BertForSequenceClassification", f"{_MODELS}.bert",
                                   "BertForSequenceClassification")
for _roberta in ("RobertaForSequenceClassification", "XLMRobertaForSequenceClassification"):
    CLASSIFIER_MODEL_REGISTRY.register(_roberta, f"{_MODELS}.bert",
                                       "RobertaForSequenceClassification")


RECURRENT_STATE_ARCHITECTURES = frozenset({
    "FalconH1ForCausalLM", "Zamba2ForCausalLM", "ZambaForCausalLM",
    "NemotronHForCausalLM", "Lfm2ForCausalLM", "Lfm2MoeForCausalLM",
    "RecurrentGemmaForCausalLM", "RwkvForCausalLM", "Qwen3NextForCausalLM",
    "MiniMaxForCausalLM", "xLSTMForCausalLM", "KimiLinearForCausalLM",
})
"""transformers models that keep a recurrent state per sequence (Mamba, linear attention,
short convolutions) and are not native: the Transformers fallback only pages attention K/V, so
their states would not carry from one step to the next; they are refused, not run wrong."""


def get_model_class(architecture: str) -> type[nn.Module]:
    """The native class; else the Transformers fallback when transformers has the architecture
    (and it keeps no recurrent state); else ValueError listing the supported architectures."""
    if architecture in RECURRENT_STATE_ARCHITECTURES:
        raise ValueError(
            f"{architecture} keeps a recurrent state per sequence, which the Transformers "
            f"fallback does not carry between steps; the state-space models that run natively "
            f"(per-request state cache) are JambaForCausalLM, BambaForCausalLM, "
            f"GraniteMoeHybridForCausalLM, MambaForCausalLM, Mamba2ForCausalLM and "
            f"FalconMambaForCausalLM")
    if architecture in EMBEDDING_MODEL_REGISTRY:
        return EMBEDDING_MODEL_REGISTRY.get(architecture)
    if architecture in CLASSIFIER_MODEL_REGISTRY:
        return CLASSIFIER_MODEL_REGISTRY.get(architecture)
    if architecture not in MODEL_REGISTRY and _fallback_supports(architecture):
        from pagedllm.model_executor.models.transformers_fallback import TransformersForCausalLM

        return TransformersForCausalLM
    return MODEL_REGISTRY.get(architecture)


def implementation_of(architecture: str) -> str:
    """"native" or "transformers fallback" (for the load log)."""
    native = any(architecture in registry for registry in
                 (MODEL_REGISTRY, EMBEDDING_MODEL_REGISTRY, CLASSIFIER_MODEL_REGISTRY))
    return "native" if native else "transformers fallback"


def _fallback_supports(architecture: str) -> bool:
    from pagedllm.model_executor.models.transformers_fallback import supports_architecture

    return supports_architecture(architecture)


def is_encoder_only(architecture: str) -> bool:
    """An encoder (served with task "embed" or "classify" on the pooling core)."""
    return architecture in EMBEDDING_MODEL_REGISTRY or architecture in CLASSIFIER_MODEL_REGISTRY


def is_sequence_classifier(architecture: str) -> bool:
    """An encoder with a classification head (served with task "classify")."""
    return architecture in CLASSIFIER_MODEL_REGISTRY


def supported_architectures() -> list[str]:
    return MODEL_REGISTRY.names()
