"""The base of every OpenAI API model, and response ids."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class OpenAIBaseModel(BaseModel):
    # Unknown fields are ignored, as OpenAI and vLLM do (clients send newer fields).
    model_config = ConfigDict(extra="ignore")
