"""A tool the model may call, as a request declares it: OpenAI's shape, which Ollama takes too."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, Field

# pydantic reads these annotations at run time: Optional, not `X | None`, keeps the server
# importable on Python 3.9.


class FunctionDef(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    strict: Optional[bool] = None


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDef
