"""Request and response models of structured outputs and tool calling (vLLM's names): the
response_format and structured_outputs objects, tool definitions and tool_choice, and the tool calls
of messages and streaming deltas."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from pagedllm.entrypoints.openai.protocol_base import OpenAIBaseModel


class JsonSchemaResponseFormat(OpenAIBaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: str
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    """OpenAI's `schema` (aliased: the name clashes with pydantic's)."""
    strict: bool | None = None


class ResponseFormat(OpenAIBaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaResponseFormat | None = None

    @model_validator(mode="after")
    def _check_schema(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("When response_format type is 'json_schema', the 'json_schema' "
                             "field must be provided.")
        return self


class StructuredOutputsRequest(OpenAIBaseModel):
    """The `structured_outputs` object: vLLM's StructuredOutputsParams fields."""

    # Unknown keys are a 400 (as vLLM's dataclass refuses them): a typo must not run unconstrained.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    json_schema: str | dict[str, Any] | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | dict[str, Any] | None = None
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None
    disable_fallback: bool = False
    """vLLM's; accepted and ignored (pagedllm has one backend, nothing to fall back to)."""


# ---- tools ---------------------------------------------------------------------------------------


class FunctionCallParam(OpenAIBaseModel):
    name: str
    arguments: str
    """JSON text of an object (OpenAI's shape); rendered to the template as a dict."""


class ToolCallParam(OpenAIBaseModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCallParam


class FunctionDefinition(OpenAIBaseModel):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    """A JSON schema of the arguments (an object)."""
    strict: bool | None = None


class ChatCompletionToolsParam(OpenAIBaseModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(OpenAIBaseModel):
    name: str


class NamedToolChoice(OpenAIBaseModel):
    type: Literal["function"] = "function"
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class DeltaFunctionCall(OpenAIBaseModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCallModel(OpenAIBaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall | None = None


class FunctionCallModel(OpenAIBaseModel):
    name: str
    arguments: str


class ToolCallModel(OpenAIBaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallModel
