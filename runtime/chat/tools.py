"""Tool calls as text: describing tools to a model, and finding the calls in what it wrote.

Models write calls in a few common shapes, all read here: Hermes/Qwen
`<tool_call>{"name": …, "arguments": …}</tool_call>`, Llama 3.x's JSON
`{"name": …, "parameters": …}` (after `<|python_tag|>` or alone), Mistral's
`[TOOL_CALLS][{…}]` (or `[TOOL_CALLS]name[ARGS]{…}`), and a plain JSON object or list naming
a tool. Pure text functions: no model, no HTTP.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Optional

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
MISTRAL = "[TOOL_CALLS]"
PYTHON_TAG = "<|python_tag|>"
# What may begin a reply that is a call, rather than prose.
OPENERS = (HERMES_OPEN, MISTRAL, PYTHON_TAG, "{", "[", "```")
# What may begin a call after some prose.
INLINE = (HERMES_OPEN, MISTRAL, PYTHON_TAG)
# The start of a call whose arguments can be streamed as they are written.
LIVE_HEAD = re.compile(
    r'\s*(?:<tool_call>\s*|<\|python_tag\|>\s*)?\{\s*"name"\s*:\s*"([^"\\]+)"\s*,'
    r'\s*"(?:arguments|parameters)"\s*:\s*'
)


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str = field(default_factory=lambda: "call_" + secrets.token_hex(12))

    def openai(self, index: Optional[int] = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }
        return out if index is None else {"index": index, **out}


def names(tools: list[dict[str, Any]]) -> list[str]:
    return [str(t.get("function", {}).get("name", "")) for t in tools]


def template_knows_tools(source: str) -> bool:
    """Whether a Jinja chat template renders `tools` itself."""
    return "tools" in source


def system_text(tools: list[dict[str, Any]]) -> str:
    """Tools described for a model whose chat template has no place for them (Hermes style)."""
    listed = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False) for t in tools)
    return (
        "You can call functions. They are described here as JSON:\n"
        f"<tools>\n{listed}\n</tools>\n"
        "To call one, reply with only "
        '<tool_call>{"name": "FUNCTION", "arguments": {ARGUMENTS}}</tool_call>; '
        "its result comes back in <tool_response></tool_response>."
    )


def as_plain_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation with tool calls and results written as text, for a template without tools."""
    out: list[dict[str, Any]] = []
    for m in messages:
        content = m.get("content") or ""
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = [
                HERMES_OPEN
                + json.dumps(
                    {
                        "name": c["function"]["name"],
                        "arguments": _loads(c["function"]["arguments"]),
                    },
                    ensure_ascii=False,
                )
                + HERMES_CLOSE
                for c in m["tool_calls"]
            ]
            out.append({"role": "assistant", "content": "\n".join([content, *calls]).strip()})
        elif m["role"] == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
        else:
            out.append({"role": m["role"], "content": content})
    return out


def call_schema(tools: list[dict[str, Any]], only: Optional[str] = None) -> dict[str, Any]:
    """The JSON schema of one call of any of `tools` (or of the one named `only`)."""
    options = []
    for t in tools:
        fn = t.get("function", {})
        if only is not None and fn.get("name") != only:
            continue
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": fn.get("name")}, "arguments": params},
                "required": ["name", "arguments"],
            }
        )
    return options[0] if len(options) == 1 else {"anyOf": options}


def _loads(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _call(obj: Any, known: list[str]) -> Optional[ToolCall]:
    """A call from a decoded JSON object, if it names one of the `known` tools."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):  # OpenAI's own shape
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or name not in known:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        args = _loads(args)
    return ToolCall(name, json.dumps(args, ensure_ascii=False))


def _json_values(text: str) -> tuple[list[Any], str]:
    """The JSON values in `text` one after another (separated by blanks, ';' or ','), and what is left."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    at = 0
    while True:
        while at < len(text) and text[at] in " \t\r\n;,":
            at += 1
        if at >= len(text) or text[at] not in "{[":
            return values, text[at:]
        try:
            value, at = decoder.raw_decode(text, at)
        except ValueError:
            return values, text[at:]
        values.append(value)


def _calls_in(values: list[Any], known: list[str]) -> Optional[list[ToolCall]]:
    calls: list[ToolCall] = []
    for value in values:
        for obj in value if isinstance(value, list) else [value]:
            call = _call(obj, known)
            if call is None:
                return None
            calls.append(call)
    return calls or None


def parse(text: str, known: list[str]) -> tuple[str, list[ToolCall]]:
    """The prose of a reply and the calls in it; a reply with no call comes back whole."""
    if HERMES_OPEN in text:
        prose, calls, rest = [], [], text
        while HERMES_OPEN in rest:
            before, _, after = rest.partition(HERMES_OPEN)
            body, closed, rest = after.partition(HERMES_CLOSE)
            found = _calls_in(_json_values(body.strip())[0], known)
            if found is None:
                return text, []
            prose.append(before)
            calls += found
            if not closed:
                rest = ""
        return "".join(prose + [rest]).strip(), calls
    if MISTRAL in text:
        before, _, after = text.partition(MISTRAL)
        if "[ARGS]" in after:  # [TOOL_CALLS]name[ARGS]{...}, once per call
            calls = []
            for part in after.split(MISTRAL):
                name, _, args = part.partition("[ARGS]")
                call = _call({"name": name.strip(), "arguments": _loads(args.strip())}, known)
                if call is None:
                    return text, []
                calls.append(call)
            return before.strip(), calls
        found = _calls_in(_json_values(after.strip())[0], known)
        return (before.strip(), found) if found else (text, [])
    body = text.strip()
    prefix = ""
    if PYTHON_TAG in body:
        prefix, _, body = body.partition(PYTHON_TAG)
    if body.startswith("```"):  # a fenced JSON block
        body = body.strip("`").removeprefix("json").strip()
    values, rest = _json_values(body)
    found = _calls_in(values, known)
    if found is None or rest.strip().strip("`").strip():
        return text, []
    return prefix.strip(), found


class ToolStream:
    """Streams a reply's prose at once, and holds back what turns out to be a tool call."""

    def __init__(self, known: list[str]) -> None:
        self.known = known
        self.held = ""  # text not sent yet
        self.calling = False  # the held text is (probably) a call
        self.started = False  # some prose has been sent
        self.live: Optional[ToolCall] = None  # the first call, while its arguments stream
        self.live_at = 0  # where its arguments begin in the held text
        self.live_sent = 0  # characters of them sent

    def progress(self) -> tuple[Optional[ToolCall], str]:
        """While a reply's first call is written: the call once its name is known, and the
        argument text that may be sent now (all but what could be the call's closing brace)."""
        if not self.calling:
            return None, ""
        new = None
        if self.live is None:
            head = LIVE_HEAD.match(self.held)
            if head is None or head.group(1) not in self.known:
                return None, ""
            if self.held[head.end() : head.end() + 1] != "{":  # arguments as an object only
                return None, ""
            self.live, self.live_at, new = ToolCall(head.group(1), ""), head.end(), True
        args = self.held[self.live_at :]
        try:  # complete: send up to its end, never what follows (another call, say)
            cut = json.JSONDecoder().raw_decode(args)[1]
        except ValueError:
            cut = args.rfind("}")
            cut = len(args) if cut < 0 else cut
        piece = args[self.live_sent : cut] if cut > self.live_sent else ""
        self.live_sent += len(piece)
        return (self.live if new else None), piece

    def feed(self, text: str) -> str:
        """The prose that is safe to send now."""
        self.held += text
        if self.calling:
            return ""
        openers = INLINE if self.started else OPENERS
        body = self.held if self.started else self.held.lstrip()
        if not self.started:
            if not body:
                return ""
            if any(body.startswith(o) for o in openers):
                self.calling = True
                return ""
            if any(o.startswith(body) for o in openers):
                return ""
        for o in INLINE:
            at = self.held.find(o)
            if at >= 0:
                out, self.held, self.calling = self.held[:at], self.held[at:], True
                self.started = self.started or bool(out)
                return out
        keep = 0  # the longest tail that could begin a call marker
        for o in INLINE:
            for k in range(min(len(o) - 1, len(self.held)), 0, -1):
                if self.held.endswith(o[:k]):
                    keep = max(keep, k)
                    break
        cut = len(self.held) - keep
        out, self.held = self.held[:cut], self.held[cut:]
        self.started = self.started or bool(out)
        return out

    live_tail = ""  # after finish(): the streamed call's arguments not sent yet

    def finish(self) -> tuple[str, list[ToolCall]]:
        """The prose left to send, and the calls found in the held text (a streamed one first)."""
        held, self.held = self.held, ""
        if not self.calling:
            return held, []
        if self.live is not None:  # the arguments' text as written, the rest of it now
            try:
                _, end = json.JSONDecoder().raw_decode(held, self.live_at)
            except ValueError:
                end = len(held)
            self.live.arguments = held[self.live_at : max(end, self.live_at + self.live_sent)]
            self.live_tail = self.live.arguments[self.live_sent :]
            _, calls = parse(held, self.known)
            return "", [self.live, *calls[1:]]
        prose, calls = parse(held, self.known)
        return (prose, calls) if calls else (held, [])
