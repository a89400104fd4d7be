"""Which model names this server answers to (the base model's and its LoRA adapters'),
/v1/models, and the runtime loading and unloading of adapters."""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pagedllm.entrypoints.openai.errors import BadRequestError, NotFoundError
from pagedllm.entrypoints.openai.protocol import ModelCard, ModelList
from pagedllm.lora.request import LoRARequest

if TYPE_CHECKING:
    from pagedllm.engine.input_processor import InputProcessor


@dataclass(frozen=True)
class LoRAModulePath:
    """An adapter the server starts with (--lora-modules name=path or JSON)."""

    name: str
    path: str
    base_model_name: str | None = None


class OpenAIServingModels:
    def __init__(self, served_model_names: list[str], model_path: str, max_model_len: int,
                 lora_modules: list[LoRAModulePath] | None = None,
                 input_processor: InputProcessor | None = None,
                 lora_dir: str | None = None) -> None:
        """input_processor checks adapters (LoRA enabled, readable, within the rank limit);
        lora_dir: where runtime loads may read adapters from (None: anywhere)."""
        assert served_model_names, "at least one served model name"
        self.served_model_names = served_model_names
        self.model_path = model_path
        self.max_model_len = max_model_len
        self.created = int(time.time())
        self.input_processor = input_processor
        self.lora_dir = os.path.realpath(lora_dir) if lora_dir else None
        self.lora_requests: dict[str, LoRARequest] = {}
        """Adapter name -> its request; ids are never reused, so a reloaded name gets fresh
        prefix-cache keys and a fresh slot."""
        self._lora_ids = itertools.count(1)
        for module in lora_modules or []:
            self.add_lora(module.name, module.path, module.base_model_name, confine=False)

    @property
    def model_name(self) -> str:
        """The name responses report."""
        return self.served_model_names[0]

    def check_model(self, model: str | None) -> str:
        """The served name to report for `model`; 404 if the server does not serve it."""
        if not model:
            return self.model_name
        if model in self.served_model_names or model in self.lora_requests:
            return model
        raise NotFoundError(f"The model `{model}` does not exist.", param="model",
                            code="model_not_found")

    def lora_request(self, model: str | None) -> LoRARequest | None:
        """The adapter a request's `model` names (None: the base model)."""
        return self.lora_requests.get(model) if model else None

    def show_available_models(self) -> ModelList:
        cards = [ModelCard(id=name, created=self.created, root=self.model_path,
                           max_model_len=self.max_model_len)
                 for name in self.served_model_names]
        cards += [ModelCard(id=lora.lora_name, created=self.created, root=lora.lora_path,
                            parent=lora.base_model_name or self.model_name,
                            max_model_len=self.max_model_len)
                  for lora in self.lora_requests.values()]
        return ModelList(data=cards)

    # ---- adapters -----------------------------------------------------------------------------

    def add_lora(self, name: str, path: str, base_model_name: str | None = None,
                 confine: bool = True) -> LoRARequest:
        """Register an adapter; a 400 if the name is taken, the path is outside --lora-dir
        (confine) or the adapter cannot run."""
        if not name or not path:
            raise BadRequestError("both `lora_name` and `lora_path` must be provided")
        if name in self.lora_requests or name in self.served_model_names:
            raise BadRequestError(f"The lora adapter '{name}' has already been loaded.",
                                  param="lora_name")
        if confine:
            path = self._confined(path)
        lora = LoRARequest(name, next(self._lora_ids), path, base_model_name)
        if self.input_processor is not None:
            try:
                self.input_processor.validate_lora(lora)
            except ValueError as e:
                raise BadRequestError(str(e), param="lora_path") from e
        self.lora_requests[name] = lora
        return lora

    def remove_lora(self, name: str) -> LoRARequest:
        if name not in self.lora_requests:
            raise NotFoundError(f"The lora adapter '{name}' cannot be found.",
                                param="lora_name", code="model_not_found")
        return self.lora_requests.pop(name)

    def _confined(self, path: str) -> str:
        """The adapter path with symlinks resolved; a 400 when --lora-dir is set and the path
        leads outside it."""
        resolved = os.path.realpath(path)
        if self.lora_dir is not None and os.path.commonpath([resolved, self.lora_dir]) != \
                self.lora_dir:
            raise BadRequestError(f"lora_path {path!r} is outside the server's --lora-dir",
                                  param="lora_path")
        return resolved
