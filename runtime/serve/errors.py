"""The error every route answers a refused request with, whichever API dialect it speaks."""

from __future__ import annotations

from typing import Optional


class APIError(Exception):
    """A request the server refuses: answered with `status` and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, code: str, param: Optional[str] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
