"""Tool calls and reasoning read from model-shaped text: every format, whole and streamed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.chat import reasoning, tools
from runtime.engine.decoding import grammar

KNOWN = ["get_weather", "get_time"]


def calls(text: str) -> tuple[str, list[tuple[str, object]]]:
    prose, found = tools.parse(text, KNOWN)
    return prose, [(c.name, json.loads(c.arguments)) for c in found]


def streamed(text: str, size: int = 3) -> tuple[str, list[tuple[str, object]]]:
    """What a ToolStream sends, fed `text` a few characters at a time."""
    stream = tools.ToolStream(KNOWN)
    prose = "".join(stream.feed(text[i : i + size]) for i in range(0, len(text), size))
    rest, found = stream.finish()
    return prose + rest, [(c.name, json.loads(c.arguments)) for c in found]


HERMES = (  # Qwen2.5 / Hermes 2 Pro
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n'
    "</tool_call>"
)
HERMES_TWO = (
    'Let me check both.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
    '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>'
)
LLAMA3 = '{"name": "get_weather", "parameters": {"city": "Paris"}}'  # Llama 3.1/3.2 JSON
LLAMA3_TAG = '<|python_tag|>{"name": "get_time", "parameters": {"zone": "UTC"}}'
MISTRAL = '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "a1B2c3D4e"}]'
MISTRAL_V11 = '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}'  # Mistral Small 3.2, Magistral
PLAIN = '{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}'  # arguments as text
FENCED = '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```'
LIST = '[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}]'

PARIS = ("get_weather", {"city": "Paris"})


@pytest.mark.parametrize(
    ("text", "prose", "expected"),
    [
        (HERMES, "", [("get_weather", {"city": "Paris", "unit": "celsius"})]),
        (HERMES_TWO, "Let me check both.", [PARIS, ("get_time", {"zone": "CET"})]),
        (
            HERMES.replace("</tool_call>", ""),
            "",
            [("get_weather", {"city": "Paris", "unit": "celsius"})],
        ),
        (LLAMA3, "", [PARIS]),
        (LLAMA3_TAG, "", [("get_time", {"zone": "UTC"})]),
        (MISTRAL, "", [PARIS]),
        (MISTRAL_V11, "", [PARIS]),
        (PLAIN, "", [PARIS]),
        (FENCED, "", [PARIS]),
        (LIST, "", [PARIS, ("get_time", {})]),
    ],
)
def test_each_format_gives_its_calls_whole_and_streamed(
    text: str, prose: str, expected: list[tuple[str, object]]
) -> None:
    assert calls(text) == (prose, expected)
    for size in (1, 4, 50):
        got_prose, got = streamed(text, size)
        assert got == expected
        assert got_prose.strip() == prose


@pytest.mark.parametrize(
    "text",
    [
        "The weather in Paris is sunny.",
        '{"city": "Paris"}',  # JSON, but it names no tool
        '{"name": "delete_files", "arguments": {}}',  # a tool the request did not offer
        '<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>',  # cut short
        '{"name": "get_weather", "arguments": {}} and then some prose',
    ],
)
def test_text_that_is_no_call_comes_back_whole(text: str) -> None:
    assert calls(text) == (text, [])
    assert streamed(text) == (text, [])


def test_prose_streams_at_once_and_only_a_marker_is_held() -> None:
    stream = tools.ToolStream(KNOWN)
    assert stream.feed("Sure") == "Sure"
    assert stream.feed(", checking <tool") == ", checking "  # may begin <tool_call>
    assert stream.feed("_call>") == ""
    assert stream.feed('{"name": "get_time", "arguments": {}}</tool_call>') == ""
    rest, found = stream.finish()
    assert (rest, [c.name for c in found]) == ("", ["get_time"])
    stream = tools.ToolStream(KNOWN)
    assert stream.feed("a < b") == "a < b"


def test_call_ids_are_distinct_and_openai_shaped() -> None:
    _, found = tools.parse(HERMES_TWO, KNOWN)
    assert len({c.id for c in found}) == 2
    first = found[0].openai(0)
    assert first["index"] == 0 and first["type"] == "function"
    assert first["id"].startswith("call_")
    assert json.loads(first["function"]["arguments"]) == {"city": "Paris"}


def test_the_call_grammar_is_built_from_the_schemas() -> None:
    defs = [
        {
            "type": "function",
            "function": {
                "name": n,
                "parameters": {
                    "type": "object",
                    "properties": {"x": {"type": "integer"}},
                    "required": ["x"],
                },
            },
        }
        for n in KNOWN
    ]
    both = grammar.from_schema(tools.call_schema(defs))
    one = grammar.from_schema(tools.call_schema(defs, only="get_time"))
    assert "get_weather" in both and "get_time" in both
    assert "get_time" in one and "get_weather" not in one
    assert "integer" in one or "[0-9]" in one


def test_a_template_without_tools_gets_them_as_text() -> None:
    convo = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "Snow, -3"},
    ]
    plain = tools.as_plain_messages(convo)
    assert plain[1] == {
        "role": "assistant",
        "content": '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>',
    }
    assert plain[2] == {"role": "user", "content": "<tool_response>\nSnow, -3\n</tool_response>"}
    described = tools.system_text([{"type": "function", "function": {"name": "get_weather"}}])
    assert '"name": "get_weather"' in described and "<tool_call>" in described


@pytest.mark.parametrize(
    ("text", "opened", "thought", "answer"),
    [
        ("<think>\n2 and 2 make 4.\n</think>\n\nIt is 4.", False, "2 and 2 make 4.", "It is 4."),
        ("2 and 2 make 4.\n</think>\n\nIt is 4.", True, "2 and 2 make 4.", "It is 4."),  # R1
        ("It is 4.", False, "", "It is 4."),
        ("<think>still thinking", False, "still thinking", ""),
    ],
)
def test_reasoning_is_split_whole_and_streamed(
    text: str, opened: bool, thought: str, answer: str
) -> None:
    assert reasoning.split(("<think>" if opened else "") + text) == (thought, answer)
    for size in (1, 5, 100):
        stream = reasoning.ReasoningStream(opened)
        pieces = [p for i in range(0, len(text), size) for p in stream.feed(text[i : i + size])]
        pieces += stream.finish()
        got_thought = "".join(t for k, t in pieces if k == "reasoning")
        got_answer = "".join(t for k, t in pieces if k == "content")
        assert (got_thought.strip(), got_answer) == (thought, answer)


TOOL_TEMPLATE = """{%- if tools %}<tools>{% for t in tools %}{{ t.function.name }};{% endfor %}</tools>
{% endif %}{%- for m in messages %}<{{ m.role }}>{{ m.content or '' }}
{%- for c in m.tool_calls or [] %}[{{ c.function.name }} {{ c.function.arguments | tojson }}]{% endfor %}
{%- if m.tool_call_id %}({{ m.tool_call_id }}){% endif %}
{% endfor %}<assistant>"""

CONVO = [
    {"role": "user", "content": "Weather?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "Snow"},
]
OFFERED = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]


def test_tools_reach_the_model_through_its_template(tmp_path: Path) -> None:
    from conftest import write_tiny_gguf

    from runtime.chat import templates
    from runtime.engine.decoding import model as engine
    from runtime.engine.devices import cpu
    from runtime.sources.source import ModelSource

    gguf = write_tiny_gguf(tmp_path / "m.gguf", extra_tokens=["<|im_start|>", "<|im_end|>"])
    engine.set_verbose(False)
    engine.start_backend(cpu.choose().path)
    jinja = tmp_path / "tools.jinja"
    jinja.write_text(TOOL_TEMPLATE)
    with engine.Model(ModelSource(gguf, 0, gguf.stat().st_size, "m"), n_ctx=128) as m:
        own = templates.render(templates.from_spec(str(jinja), ""), CONVO, m, OFFERED)
        chatml = templates.render(templates.from_spec("chatml", ""), CONVO, m, OFFERED)
    # A template that knows tools gets them, and the call's arguments as an object.
    assert own == (
        "<tools>get_weather;</tools>\n<user>Weather?"
        '<assistant>[get_weather {"city": "Oslo"}]<tool>Snow(c1)<assistant>'
    )
    # One that does not gets them in a system message and the calls as text.
    assert chatml.startswith("<|im_start|>system\nYou can call functions.")
    assert '{"name": "get_weather", "parameters": {}}' in chatml
    assert (
        '<|im_start|>assistant\n<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}'
        "</tool_call><|im_end|>"
    ) in chatml
    assert "<|im_start|>user\n<tool_response>\nSnow\n</tool_response><|im_end|>" in chatml


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2]}}',  # a grammar's
        HERMES_TWO.split("Let me check both.\n")[1],
    ],
)
def test_a_calls_arguments_stream_as_they_are_written(text: str) -> None:
    from runtime.serve.choices import Reading, Streamer
    from runtime.serve.jobs import Job

    streamer = Streamer(
        Reading(chat=True, model=None, tools=KNOWN), Job(prompt=[], n_predict=0, sampling=None)
    )
    deltas = []
    for i in range(0, len(text), 2):
        deltas.append(streamer.text(text[i : i + 2]))
    tail, finish = streamer.done("stop")
    sent_early = [d for batch in deltas for d in batch]
    calls: dict[int, dict[str, str]] = {}
    for d in sent_early + tail:
        for c in d["delta"]["tool_calls"]:
            entry = calls.setdefault(c["index"], {"name": "", "arguments": ""})
            entry["name"] += c["function"].get("name", "")
            entry["arguments"] += c["function"]["arguments"]
    assert finish == "tool_calls"
    _, expected = tools.parse(text, KNOWN)
    assert [c["name"] for c in calls.values()] == [c.name for c in expected]
    for got, want in zip(calls.values(), expected):
        assert json.loads(got["arguments"]) == json.loads(want.arguments)
    early = "".join(
        c["function"]["arguments"] for d in sent_early for c in d["delta"]["tool_calls"]
    )
    assert len(early) > 10  # most of the first call's arguments went out before the end


def test_ollama_replies_use_these_readers() -> None:
    """/api/chat reads replies with the same parser and splitter, in Ollama's call shape."""
    from runtime.serve.ollama import replies as ollama_replies
    from runtime.serve.ollama.models import Message
    from runtime.serve.ollama.routes import messages_of

    text = "<think>Paris, then.</think>" + HERMES
    thought, content, found = ollama_replies.whole(text, True, False, KNOWN)
    assert thought == "Paris, then." and content == ""
    assert found == [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}
    ]
    reader = ollama_replies.Reader(True, False, KNOWN)
    pieces = [reader.feed(text[i : i + 3]) for i in range(0, len(text), 3)]
    end = reader.finish()
    assert "".join(t for t, _ in pieces) + end[0] == thought
    assert "".join(c for _, c in pieces) + end[1] == "" and end[2] == found
    # Arguments that are not an object are no call Ollama can send: the text stays text.
    odd = '{"name": "get_weather", "arguments": "Paris"}'
    assert ollama_replies.whole(odd, False, False, KNOWN) == ("", odd, [])

    convo = messages_of(
        [
            Message(role="user", content="Weather?"),
            Message.model_validate(
                {
                    "role": "assistant",
                    "tool_calls": [{"function": {"name": "get_weather", "arguments": {"c": "P"}}}],
                }
            ),
            Message(role="tool", content="Sunny", tool_name="get_weather"),
        ]
    )
    [call] = convo[1]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"c": "P"}'}
    assert convo[2]["tool_call_id"] == call["id"] and convo[2]["name"] == "get_weather"
