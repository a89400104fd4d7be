"""MultiModalConfig: how many images a prompt may hold, how large, and where they may come from
(vLLM's --limit-mm-per-prompt, --allowed-local-media-path, --allowed-media-domains)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MultiModalConfig:
    limit_per_prompt: dict[str, int] = field(default_factory=lambda: {"image": 1})
    """Most items of each modality in one prompt (vLLM's --limit-mm-per-prompt)."""
    max_image_bytes: int = 20 * 1024 * 1024
    """Encoded size of one image."""
    max_image_pixels: int = 4096 * 4096
    """Width x height of one image, read from its header before decoding."""
    allowed_local_media_path: str | None = None
    """file:// URLs are read only under this directory (None: refused)."""
    allowed_media_domains: tuple[str, ...] = ()
    """http(s) URLs are fetched only from these hosts (empty: refused)."""

    def __post_init__(self) -> None:
        for modality, limit in self.limit_per_prompt.items():
            if modality != "image":
                raise ValueError(f"limit_mm_per_prompt: unknown modality {modality!r} (only "
                                 f"'image' is served)")
            if not isinstance(limit, int) or limit < 0:
                raise ValueError(f"limit_mm_per_prompt[{modality!r}] must be an integer >= 0")
        if self.max_image_bytes < 1 or self.max_image_pixels < 1:
            raise ValueError("max_image_bytes and max_image_pixels must be >= 1")

    @classmethod
    def parse(cls, limit_mm_per_prompt: str | dict[str, Any] | None = None,
              **kwargs: Any) -> MultiModalConfig:
        """limit_mm_per_prompt as vLLM takes it: a JSON object or a dict."""
        if isinstance(limit_mm_per_prompt, str):
            try:
                limit_mm_per_prompt = json.loads(limit_mm_per_prompt)
            except json.JSONDecodeError as e:
                raise ValueError(f"limit_mm_per_prompt is not JSON: {e}") from None
            if not isinstance(limit_mm_per_prompt, dict):
                raise ValueError("limit_mm_per_prompt must be a JSON object")
        domains = tuple(kwargs.pop("allowed_media_domains", None) or ())
        limits = {"image": 1} if limit_mm_per_prompt is None else dict(limit_mm_per_prompt)
        return cls(limits, allowed_media_domains=domains,
                   **{k: v for k, v in kwargs.items() if v is not None})

    def limit(self, modality: str) -> int:
        return self.limit_per_prompt.get(modality, 1)
