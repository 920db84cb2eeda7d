"""Terminal chat, as a user types it (a real pty), and chat formats for models with and
without a chat template."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pexpect
import pytest
from conftest import assert_clean_error, default_sigint, run_pyz, write_tiny_gguf

from runtime.chat.stops import StopFilter


def spawn(pyz: Path, *args: str) -> pexpect.spawn:
    child = pexpect.spawn(
        str(pyz),
        list(args),
        encoding="utf-8",
        timeout=120,
        env=dict(os.environ),
        dimensions=(40, 200),
        preexec_fn=default_sigint,
    )
    child.logfile_read = sys.stderr if os.environ.get("LLAMAPYZ_TEST_TRACE") else None
    return child


@pytest.mark.slow
def test_terminal_chat_answers_resets_interrupts_and_exits(smollm2_pyz: Path) -> None:
    child = spawn(smollm2_pyz, "--temp", "0", "-n", "400")
    child.expect_exact("chat template: the model's own (tokenizer.chat_template in the GGUF)")
    child.expect_exact(">>> ")
    child.sendline("What is 2 + 2?")
    child.expect_exact(">>> ")
    assert "4" in child.before
    child.sendline("/reset")
    child.expect_exact("(the conversation was reset)")
    child.expect_exact(">>> ")
    child.sendline("Write a very long story about a dragon who learns to cook.")
    child.expect(r"\w+ \w+ \w+")  # the reply has started streaming
    child.sendintr()
    child.expect_exact("(stopped)")
    child.expect_exact(">>> ")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


@pytest.mark.slow
def test_ctrl_c_twice_at_the_prompt_quits_and_ctrl_d_too(
    tiny_pyz: Path, parent_sigint: str
) -> None:
    child = spawn(tiny_pyz, "--temp", "0", "-n", "8")
    child.expect_exact(">>> ")
    child.sendintr()
    child.expect_exact("(press Ctrl-C again or Ctrl-D to quit)")
    child.expect_exact(">>> ")
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    child = spawn(tiny_pyz, "--temp", "0", "-n", "8")
    child.expect_exact(">>> ")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_model_without_template_chats_as_plain_text(tiny_pyz: Path) -> None:
    result = run_pyz(tiny_pyz, "--chat", "--temp", "0", "-n", "12", input="the quick brown fox\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "an empty reply is what llama-2 fallback gives; we must not"
    assert (
        "chat: the GGUF has no chat template and no chat tokens, so it looks like a base model; "
        "completing the conversation as plain text" in result.stderr
    )


def test_chat_template_override_and_unknown_name(tiny_pyz: Path, tmp_path: Path) -> None:
    result = run_pyz(
        tiny_pyz, "--chat", "--chat-template", "chatml", "-n", "4", "--temp", "0", input="hi\n"
    )
    assert result.returncode == 0, result.stderr
    assert "chat template: chatml (from --chat-template)" in result.stderr
    bad = run_pyz(tiny_pyz, "--chat", "--chat-template", "nope", input="hi\n")
    assert_clean_error(bad, 1, "unknown chat template 'nope': give a .jinja file or one of ")
    jinja = tmp_path / "mine.jinja"
    jinja.write_text("{% for m in messages %}{{ m['content'] }} {% endfor %}")
    args = ("-n", "6", "--temp", "0")
    ok = run_pyz(tiny_pyz, "--chat", "--chat-template", str(jinja), *args, input="the quick\n")
    assert "chat template: mine.jinja (from --chat-template)" in ok.stderr
    # The reply is the completion of exactly what the template rendered.
    plain = run_pyz(tiny_pyz, "-p", "the quick ", *args)
    assert ok.stdout == plain.stdout + "\n" and plain.stdout.strip()


def test_template_found_from_chat_tokens(tmp_path: Path) -> None:
    from runtime.chat import templates
    from runtime.engine.decoding import model as engine

    gguf = write_tiny_gguf(tmp_path / "m.gguf", extra_tokens=["<|im_start|>", "<|im_end|>"])
    engine.set_verbose(False)
    from runtime.engine.devices import cpu
    from runtime.sources.source import ModelSource

    engine.start_backend(cpu.choose().path)
    with engine.Model(ModelSource(gguf, 0, gguf.stat().st_size, "m"), n_ctx=128) as m:
        fmt = templates.choose(m, None, None)
        assert (fmt.kind, fmt.name) == ("builtin", "chatml")
        text = templates.render(fmt, [{"role": "user", "content": "hi"}], m)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_long_conversation_drops_oldest_turns(tiny_pyz: Path) -> None:
    # llama.cpp rounds the context up to 256 tokens; 20 exchanges need about 400.
    lines = "".join(f"the quick brown fox jumps over a lazy dog {i}\n" for i in range(20))
    result = run_pyz(tiny_pyz, "--chat", "-c", "256", "-n", "8", "--temp", "0", input=lines)
    assert result.returncode == 0, result.stderr
    assert "(the conversation outgrew the context of 256 tokens: the oldest turn was dropped)" in (
        result.stderr
    )
    assert result.stdout.count("\n") == 20


@pytest.mark.parametrize(
    "pieces,stops,expected",
    [
        (["Hello", " wor", "ld"], ("\nUser:",), "Hello world"),
        (["Yes.", "\nUs", "er: more"], ("\nUser:",), "Yes."),
        (["a\nU", "nrelated"], ("\nUser:",), "a\nUnrelated"),
        (["x", "\nUser:"], ("\nUser:", "\nuser:"), "x"),
    ],
)
def test_stop_filter(pieces: list[str], stops: tuple[str, ...], expected: str) -> None:
    f = StopFilter(stops)
    out = "".join(f.feed(p) for p in pieces) + f.flush()
    assert out == expected


def test_chat_template_baked_at_build(tiny_gguf: Path, tmp_path: Path) -> None:
    from conftest import pack

    jinja = tmp_path / "t.jinja"
    jinja.write_text("{% for m in messages %}{{ m['content'] }} {% endfor %}")
    out = tmp_path / "baked.pyz"
    built = pack("build", str(tiny_gguf), "-o", str(out), "--chat-template", str(jinja))
    assert built.returncode == 0, built.stderr
    jinja.unlink()  # the template travels inside the file
    assert (
        "chat format:    t.jinja (set at build; overrides the model's)"
        in pack("inspect", str(out)).stdout
    )
    args = ("--chat", "-n", "6", "--temp", "0")
    result = run_pyz(out, *args, input="the quick\n")
    assert "chat template: t.jinja (set when this file was built)" in result.stderr
    assert result.stdout == run_pyz(out, "-p", "the quick ", "-n", "6", "--temp", "0").stdout + "\n"
    again = run_pyz(out, *args, "--chat-template", "chatml", input="the quick\n")
    assert "chat template: chatml (from --chat-template)" in again.stderr
    bad = pack("build", str(tiny_gguf), "-o", str(tmp_path / "x.pyz"), "--chat-template", "nope")
    assert_clean_error(bad, 1, "unknown chat template 'nope'")
    assert not (tmp_path / "x.pyz").exists()
