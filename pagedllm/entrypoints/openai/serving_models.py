"""Which model names this server answers to, and /v1/models."""

from __future__ import annotations

import time

from pagedllm.entrypoints.openai.errors import NotFoundError
from pagedllm.entrypoints.openai.protocol import ModelCard, ModelList


class OpenAIServingModels:
    def __init__(self, served_model_names: list[str], model_path: str, max_model_len: int) -> None:
        assert served_model_names, "at least one served model name"
        self.served_model_names = served_model_names
        self.model_path = model_path
        self.max_model_len = max_model_len
        self.created = int(time.time())

    @property
    def model_name(self) -> str:
        """The name responses report."""
        return self.served_model_names[0]

    def check_model(self, model: str | None) -> str:
        """The served name to report for `model`; 404 if the server does not serve it."""
        if not model:
            return self.model_name
        if model in self.served_model_names:
            return model
        raise NotFoundError(f"The model `{model}` does not exist.", param="model",
                            code="model_not_found")

    def show_available_models(self) -> ModelList:
        return ModelList(data=[
            ModelCard(id=name, created=self.created, root=self.model_path,
                      max_model_len=self.max_model_len)
            for name in self.served_model_names
        ])
