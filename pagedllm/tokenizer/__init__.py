"""Tokenizers: loading (HF directories, GGUF vocabularies), chat templates, detokenizing."""
