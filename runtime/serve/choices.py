"""A reply's text read into an OpenAI choice: reasoning apart, tool calls found, log-probs.

`whole` reads a finished reply; `Streamer` reads one as it comes and says what each chunk's
delta carries. Both chat and text completions go through here, so each is written once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from runtime.chat import reasoning
from runtime.chat.tools import ToolCall, ToolStream, parse
from runtime.serve.jobs import Job

ARGUMENT_PIECE = 8  # characters of a streamed call's arguments per chunk


@dataclass
class Reading:
    """How a request's replies are read."""

    chat: bool
    model: Any  # engine.Model, for the text of tokens
    tools: list[str] = field(default_factory=list)  # tool names to look for; none: no calls
    reasoning: bool = False  # put <think>…</think> in reasoning_content
    opened: bool = False  # the prompt itself opened <think>
    logprobs: Optional[int] = None  # None: not asked; N: the N likeliest tokens too
    parallel: bool = True  # more than one tool call may be returned


def _token(model: Any, token: int) -> tuple[str, list[int]]:
    raw = model.piece(token)
    return raw.decode("utf-8", "replace"), list(raw)


def chat_logprobs(model: Any, entries: list[tuple[int, float, list[tuple[int, float]]]]) -> Any:
    out = []
    for token, logprob, top in entries:
        text, raw = _token(model, token)
        best = []
        for t, lp in top:
            t_text, t_raw = _token(model, t)
            best.append({"token": t_text, "logprob": lp, "bytes": t_raw})
        out.append({"token": text, "logprob": logprob, "bytes": raw, "top_logprobs": best})
    return {"content": out}


def text_logprobs(
    model: Any, entries: list[tuple[int, float, list[tuple[int, float]]]], offset: int
) -> Any:
    tokens, values, tops, offsets = [], [], [], []
    for token, logprob, top in entries:
        text = _token(model, token)[0]
        tokens.append(text)
        values.append(logprob)
        tops.append({_token(model, t)[0]: lp for t, lp in top})
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": values,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def whole(r: Reading, job: Job, text: str, finish: Optional[str]) -> dict[str, Any]:
    """The choice for a finished reply (index left to the caller)."""
    if not r.chat:
        lp = text_logprobs(r.model, job.token_logprobs, 0) if r.logprobs is not None else None
        return {"text": text, "logprobs": lp, "finish_reason": finish}
    thought = ""
    if r.reasoning:
        thought, text = reasoning.split(("<think>" if r.opened else "") + text)
    calls: list[ToolCall] = []
    if r.tools:
        text, calls = parse(text, r.tools)
        calls = calls if r.parallel else calls[:1]
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
    if thought:
        message["reasoning_content"] = thought
    if calls:
        message["tool_calls"] = [c.openai() for c in calls]
        finish = "tool_calls"
    lp = chat_logprobs(r.model, job.token_logprobs) if r.logprobs is not None else None
    return {"message": message, "logprobs": lp, "finish_reason": finish}


class Streamer:
    """One choice's stream: the deltas to send for each piece of text, and at the end."""

    def __init__(self, r: Reading, job: Job) -> None:
        self.r, self.job = r, job
        self.thinking = reasoning.ReasoningStream(r.opened) if r.chat and r.reasoning else None
        self.calls = ToolStream(r.tools) if r.chat and r.tools else None
        self.reported = 0  # log-prob entries sent so far
        self.offset = 0  # characters of text sent so far (completions' text_offset)
        self.found = False  # tool calls were found

    def _logprobs(self) -> Any:
        if self.r.logprobs is None:
            return None
        entries = self.job.token_logprobs[self.reported :]
        self.reported += len(entries)
        if self.r.chat:
            return chat_logprobs(self.r.model, entries)
        return text_logprobs(self.r.model, entries, self.offset)

    def _content(self, text: str) -> dict[str, Any]:
        if not self.r.chat:
            fields = {"text": text, "logprobs": self._logprobs()}
            self.offset += len(text)
            return fields
        out: dict[str, Any] = {"delta": {"content": text}}
        if self.r.logprobs is not None:
            out["logprobs"] = self._logprobs()
        return out

    def _pieces(self, pieces: list[tuple[str, str]], end: bool) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for kind, text in pieces:
            if kind == "reasoning":
                out.append({"delta": {"reasoning_content": text}})
                continue
            if self.calls is not None:
                text = self.calls.feed(text)
            if text:
                out.append(self._content(text))
            if self.calls is not None:
                started, piece = self.calls.progress()
                if started is not None:
                    out.append(self._head(started, 0))
                if piece:
                    out.append(self._arguments(0, piece))
        if end and self.calls is not None:
            live = self.calls.live is not None
            rest, found = self.calls.finish()
            found = found if self.r.parallel else found[:1]
            if rest:
                out.append(self._content(rest))
            if live and self.calls.live_tail:
                out.append(self._arguments(0, self.calls.live_tail))
            for index, call in enumerate(found):
                if live and index == 0:
                    continue  # sent as it was written
                out.append(self._head(call, index))
                args = call.arguments
                for at in range(0, len(args), ARGUMENT_PIECE):
                    out.append(self._arguments(index, args[at : at + ARGUMENT_PIECE]))
            self.found = bool(found)
        return out

    def _head(self, call: ToolCall, index: int) -> dict[str, Any]:
        head = call.openai(index)
        head["function"] = {"name": call.name, "arguments": ""}
        return {"delta": {"tool_calls": [head]}}

    def _arguments(self, index: int, text: str) -> dict[str, Any]:
        return {"delta": {"tool_calls": [{"index": index, "function": {"arguments": text}}]}}

    def text(self, text: str) -> list[dict[str, Any]]:
        pieces = self.thinking.feed(text) if self.thinking else [("content", text)]
        return self._pieces(pieces, end=False)

    def done(self, finish: Optional[str]) -> tuple[list[dict[str, Any]], Optional[str]]:
        """The last deltas, and the finish reason ("tool_calls" when calls were found)."""
        pieces = self.thinking.finish() if self.thinking else []
        out = self._pieces(pieces, end=True)
        if self.r.logprobs is not None and self.reported < len(self.job.token_logprobs):
            out.append(self._content(""))  # tokens held back by a stop string
        return out, "tool_calls" if self.found else finish
