"""Constrained output: GBNF grammars from a file, a JSON schema, or an API response_format.

The JSON-schema-to-GBNF converter is llama-cpp-python's (`llama_cpp.llama_grammar`, pure
Python); llama.cpp's grammar sampler then enforces the result token by token.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Optional


class GrammarError(Exception):
    """A grammar or schema that cannot be used."""


def _converter() -> Any:
    from runtime.engine.decoding.model import bindings

    bindings()  # installs the llama_cpp package without running its numpy-importing __init__
    return importlib.import_module("llama_cpp.llama_grammar")


def json_grammar() -> str:
    """Any JSON object."""
    return str(_converter().JSON_GBNF)


def from_schema(schema: Any) -> str:
    """The GBNF that matches JSON valid against `schema` (a dict)."""
    if not isinstance(schema, dict):
        raise GrammarError("a JSON schema must be a JSON object")
    try:
        return str(_converter().json_schema_to_gbnf(json.dumps(schema)))
    except Exception as exc:  # the converter raises plain exceptions on what it cannot express
        raise GrammarError(f"cannot turn the JSON schema into a grammar ({exc})") from None


def from_file(path: str) -> str:
    try:
        return Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise GrammarError(f"cannot read the grammar {path} ({exc.strerror})") from None


def from_schema_arg(value: str) -> str:
    """`--json-schema`: inline JSON, or the path of a file holding it."""
    text = value
    if not value.lstrip().startswith("{"):
        try:
            text = Path(value).expanduser().read_text(encoding="utf-8")
        except OSError as exc:
            raise GrammarError(f"cannot read the JSON schema {value} ({exc.strerror})") from None
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise GrammarError(f"the JSON schema is not valid JSON ({exc})") from None
    return from_schema(schema)


def from_response_format(kind: str, json_schema: Optional[dict[str, Any]]) -> str:
    """The grammar for an OpenAI `response_format` of type json_object or json_schema."""
    if kind == "json_object":
        return json_grammar()
    if not json_schema:
        raise GrammarError("response_format.json_schema is missing")
    schema = json_schema.get("schema", json_schema)
    return from_schema(schema)
