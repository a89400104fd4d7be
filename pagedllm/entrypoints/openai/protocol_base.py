"""The base of every OpenAI API model, and response ids."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict

MAX_INT32 = 2**31 - 1
"""Upper bound of the request's count-like integers (top_k, dimensions, max_tokens, ...): far
past any vocabulary, width or context, and what int32 indices hold; larger is a 400."""


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class OpenAIBaseModel(BaseModel):
    # Unknown fields are ignored, as OpenAI and vLLM do (clients send newer fields).
    model_config = ConfigDict(extra="ignore")
