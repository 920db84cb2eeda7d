"""Chooses how a conversation becomes a prompt, and says why.

In order: the user's `--chat-template` (a llama.cpp built-in name or a Jinja file), the one
baked into the .pyz, the GGUF's own `tokenizer.chat_template`, then a built-in template
guessed from the special tokens in the vocabulary. A model with none of these looks like a
base model: the conversation is completed as plain text ("User: …\\nAssistant:") rather
than forced through a format the model never saw — which is how llama-cpp-python's silent
llama-2 fallback ends up answering with an empty string.
"""

from __future__ import annotations

import contextlib
import ctypes
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

Message = dict[str, Any]  # role and content; tool_calls, tool_call_id and name for tools

# Special tokens that give a model's chat format away, best evidence first.
MARKERS = (
    ("<|im_start|>", "chatml"),
    ("<|start_header_id|>", "llama3"),
    ("<start_of_turn>", "gemma"),
    ("<|header_start|>", "llama4"),
    ("<|START_OF_TURN_TOKEN|>", "command-r"),
    ("<|assistant|>", "phi3"),
    ("[INST]", "llama2"),
)
PLAIN_STOPS = ("\nUser:", "\nuser:")


class TemplateError(Exception):
    """A chat template that cannot be found or rendered."""


class TemplateLimitError(TemplateError):
    """A chat template stopped for running too long, too deep or too large."""


@dataclass
class ChatFormat:
    """How to turn messages into prompt text; `kind` is jinja, builtin or plain."""

    kind: str
    name: str
    why: str
    source: str = ""
    stops: tuple[str, ...] = ()

    def notice(self) -> str:
        if self.kind == "plain":
            return f"chat: {self.why}; completing the conversation as plain text"
        return f"chat template: {self.name} ({self.why})"


def builtin_names() -> list[str]:
    from runtime.engine.decoding.model import bindings

    C = bindings()
    n = int(C.llama_chat_builtin_templates(None, 0))
    arr = (ctypes.c_char_p * n)()
    C.llama_chat_builtin_templates(arr, n)
    return sorted(v.decode() for v in arr if v)


def from_spec(spec: str, why: str) -> ChatFormat:
    """A `--chat-template` value: a built-in name, or a path to a Jinja file."""
    path = Path(spec).expanduser()
    if spec.endswith((".jinja", ".j2")) or path.is_file():
        try:
            source = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TemplateError(f"cannot read the chat template {spec} ({exc.strerror})") from None
        return ChatFormat("jinja", path.name, why, source)
    names = builtin_names()
    if spec not in names:
        raise TemplateError(
            f"unknown chat template {spec!r}: give a .jinja file or one of {', '.join(names)}"
        )
    return ChatFormat("builtin", spec, why)


def baked(spec: str) -> dict[str, str]:
    """What `pack build --chat-template SPEC` records: a built-in name, or a Jinja file's text."""
    fmt = from_spec(spec, "")
    if fmt.kind == "jinja":
        return {"kind": "jinja", "name": fmt.name, "source": fmt.source}
    return {"kind": "builtin", "name": fmt.name}


def choose(model: Any, override: Optional[str], built_in: Optional[dict[str, str]]) -> ChatFormat:
    """The chat format for `model` (an engine.Model), with the reason for the choice."""
    if override:
        return from_spec(override, "from --chat-template")
    if built_in:
        why = "set when this file was built"
        kind, name = built_in.get("kind", "builtin"), built_in.get("name", "")
        return ChatFormat(kind, name, why, built_in.get("source", ""))
    own = model.meta("tokenizer.chat_template")
    if own:
        return ChatFormat("jinja", "the model's own", "tokenizer.chat_template in the GGUF", own)
    for marker, name in MARKERS:
        tokens = model.tokenize(marker, add_special=False)
        if len(tokens) == 1 and model.token_text(tokens[0]) == marker:
            return ChatFormat(
                "builtin", name, f"the GGUF has no template; its vocabulary has {marker}"
            )
    return ChatFormat(
        "plain",
        "plain",
        "the GGUF has no chat template and no chat tokens, so it looks like a base model",
        stops=PLAIN_STOPS,
    )


def render(
    fmt: ChatFormat,
    messages: list[Message],
    model: Any,
    tools: Optional[list[dict[str, Any]]] = None,
) -> str:
    """The prompt text for `messages` (and `tools`), ending where the assistant's reply begins.

    A Jinja template that renders `tools` gets them and the conversation's calls as they are;
    any other gets the tools described in a system message and the calls written as text.
    """
    from runtime.chat import tools as tool_text

    if fmt.kind == "jinja" and tool_text.template_knows_tools(fmt.source):
        return _render_jinja(fmt.source, _with_object_arguments(messages), model, tools)
    if tools or any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
        messages = tool_text.as_plain_messages(messages)
    if tools:
        described = tool_text.system_text(tools)
        if messages and messages[0]["role"] == "system":
            first = {"role": "system", "content": messages[0]["content"] + "\n\n" + described}
            messages = [first, *messages[1:]]
        else:
            messages = [{"role": "system", "content": described}, *messages]
    messages = [{"role": m["role"], "content": m.get("content") or ""} for m in messages]
    if fmt.kind == "plain":
        parts = []
        for m in messages:
            role = {"system": "", "user": "User: ", "assistant": "Assistant: "}.get(m["role"], "")
            parts.append(role + m["content"])
        return "\n".join(parts) + "\nAssistant:"
    if fmt.kind == "builtin":
        return _render_builtin(fmt.name, messages)
    return _render_jinja(fmt.source, messages, model)


def _render_builtin(name: str, messages: list[Message]) -> str:
    from runtime.engine.decoding.model import bindings

    C = bindings()
    keep = [(m["role"].encode(), m["content"].encode()) for m in messages]
    chat = (C.llama_chat_message * len(keep))(*[C.llama_chat_message(r, c) for r, c in keep])
    size = 256 + sum(len(r) + len(c) for r, c in keep) * 2
    buf = ctypes.create_string_buffer(size)
    n = C.llama_chat_apply_template(name.encode(), chat, len(keep), True, buf, size)
    if n > size:
        buf = ctypes.create_string_buffer(n)
        n = C.llama_chat_apply_template(name.encode(), chat, len(keep), True, buf, n)
    if n < 0:
        raise TemplateError(f"llama.cpp cannot apply the chat template {name!r}")
    return buf.raw[:n].decode("utf-8", "replace")


def _with_object_arguments(messages: list[Message]) -> list[Message]:
    """Tool-call arguments as objects: templates write them with `tojson`."""
    import json

    out = []
    for m in messages:
        if m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                fn = dict(c.get("function", {}))
                with contextlib.suppress(TypeError, ValueError):
                    fn["arguments"] = json.loads(fn.get("arguments") or "{}")
                calls.append({**c, "function": fn, **fn})  # some templates read call.name
            m = {**m, "tool_calls": calls}
        out.append(m)
    return out


def _render_jinja(
    source: str,
    messages: list[Message],
    model: Any,
    tools: Optional[list[dict[str, Any]]] = None,
) -> str:
    bos = model.special_token("bos")
    text = render_jinja(source, messages, bos, model.special_token("eos"), tools)
    # The tokenizer adds BOS itself; a template that writes it too would double it.
    if bos and text.startswith(bos):
        text = text[len(bos) :]
    return text


def render_jinja(
    source: str,
    messages: list[Message],
    bos: str,
    eos: str,
    tools: Optional[list[dict[str, Any]]] = None,
) -> str:
    """A Jinja chat template's prompt for `messages` (and `tools`), in the limited sandbox."""
    import jinja2

    from runtime.chat import sandbox

    def raise_exception(message: str) -> None:
        raise TemplateError(f"the chat template refused the conversation: {message}")

    globals_ = {"raise_exception": raise_exception, "strftime_now": time.strftime}
    context = {
        "messages": messages,
        "add_generation_prompt": True,
        "bos_token": bos,
        "eos_token": eos,
        "tools": tools or None,
    }
    try:
        return sandbox.render(source, context, globals_)
    except TemplateError:
        raise
    except sandbox.LimitExceeded as exc:
        raise TemplateLimitError(f"the chat template was stopped: it {exc}") from None
    except RecursionError:
        raise TemplateLimitError("the chat template was stopped: it recursed too deeply") from None
    except MemoryError:
        raise TemplateLimitError("the chat template was stopped: it ran out of memory") from None
    except jinja2.TemplateError as exc:
        raise TemplateError(f"the chat template cannot be rendered ({exc})") from None
    except Exception as exc:  # a template is code from the file: any error is its own
        raise TemplateError(
            f"the chat template cannot be rendered ({type(exc).__name__}: {exc})"
        ) from None


SAMPLE: list[Message] = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi! How can I help?"},
    {"role": "user", "content": "Tell me a joke."},
]


def trial(source: str) -> None:
    """Render `source` on a sample conversation; TemplateLimitError if it goes past a limit
    (other refusals are the template's own business, for a conversation it does not take)."""
    try:
        render_jinja(source, SAMPLE, "<s>", "</s>")
    except TemplateLimitError:
        raise
    except TemplateError:
        pass
