"""A reasoning model's thinking, `<think>…</think>`, apart from its answer.

As llama-server's `--reasoning-format deepseek`: the thinking goes to `reasoning_content`.
A reply with `</think>` but no opening tag (templates that open it in the prompt) is
thinking up to that tag. Pure text functions.
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


def split(text: str) -> tuple[str, str]:
    """(reasoning, answer) of a whole reply."""
    body = text.lstrip()
    if body.startswith(OPEN):
        thought, closed, answer = body[len(OPEN) :].partition(CLOSE)
        return thought.strip(), answer.lstrip() if closed else ""
    if CLOSE in text:
        thought, _, answer = text.partition(CLOSE)
        return thought.strip(), answer.lstrip()
    return "", text


class ReasoningStream:
    """Splits streamed text into ("reasoning", text) and ("content", text) pieces."""

    def __init__(self, opened: bool = False) -> None:
        self.held = ""
        self.state = "thinking" if opened else "start"  # start, thinking, answering
        self.trim = False  # drop the blanks that follow </think>

    def feed(self, text: str) -> list[tuple[str, str]]:
        self.held += text
        out: list[tuple[str, str]] = []
        if self.state == "start":
            body = self.held.lstrip()
            if not body or OPEN.startswith(body):
                return out
            if body.startswith(OPEN):
                self.state, self.held = "thinking", body[len(OPEN) :].lstrip()
            else:
                self.state = "answering"
        if self.state == "thinking":
            at = self.held.find(CLOSE)
            if at >= 0:
                if self.held[:at].rstrip():
                    out.append(("reasoning", self.held[:at].rstrip()))
                self.held, self.state, self.trim = self.held[at + len(CLOSE) :], "answering", True
            else:
                keep = next(
                    (
                        k
                        for k in range(min(len(CLOSE) - 1, len(self.held)), 0, -1)
                        if self.held.endswith(CLOSE[:k])
                    ),
                    0,
                )
                cut = len(self.held) - keep
                if cut:
                    out.append(("reasoning", self.held[:cut]))
                self.held = self.held[cut:]
                return out
        if self.state == "answering":
            if self.trim:
                self.held = self.held.lstrip()
                self.trim = not self.held
            if self.held:
                out.append(("content", self.held))
            self.held = ""
        return out

    def finish(self) -> list[tuple[str, str]]:
        held, self.held = self.held, ""
        if not held:
            return []
        return [("reasoning" if self.state == "thinking" else "content", held)]
