"""A draft model: packed in the file with --draft and used with nothing on the command line,
or given with -md; the same text as without it; an incompatible one refused in one sentence."""

from __future__ import annotations

import os
from pathlib import Path

import openai
import pytest
from conftest import Server, assert_clean_error, pack, run_pyz, write_tiny_gguf
from test_speculate import CODE


@pytest.fixture(scope="module")
def drafted_pyz(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> Path:
    """The tiny model with a tiny draft of the same vocabulary (other weights)."""
    d = tmp_path_factory.mktemp("drafted")
    model, draft = write_tiny_gguf(d / "m.gguf"), write_tiny_gguf(d / "draft.gguf", seed=5)
    out = d / "m.pyz"
    env = dict(os.environ, LLAMAPYZ_CACHE=str(session_cache))
    result = pack("build", str(model), "--draft", str(draft), "-o", str(out), env=env)
    assert result.returncode == 0, result.stderr
    return out


ARGS = ("-p", "the fox", "-n", "24", "--temp", "0", "-t", "2")


def test_the_packed_draft_is_used_and_changes_no_text(drafted_pyz: Path) -> None:
    plain = run_pyz(drafted_pyz, *ARGS, "--spec-type", "none")
    auto = run_pyz(drafted_pyz, *ARGS, "--verbose")
    alone = run_pyz(drafted_pyz, *ARGS, "--spec-type", "draft-simple", "--verbose")
    assert plain.returncode == auto.returncode == alone.returncode == 0, auto.stderr
    assert auto.stdout == plain.stdout == alone.stdout and plain.stdout
    assert "draft model: m.pyz (embedded draft draft.gguf)" in auto.stderr
    assert "speculation (draft): drafted " in alone.stderr
    assert "speculation (ngram+draft): drafted " in auto.stderr
    info = run_pyz(drafted_pyz, "--system-info").stdout
    assert "speculation: ngram+draft (" in info and "draft model m.pyz (embedded" in info


def test_md_gives_a_draft_from_outside(tiny_pyz: Path, tmp_path: Path) -> None:
    draft = write_tiny_gguf(tmp_path / "other.gguf", seed=9)
    plain = run_pyz(tiny_pyz, *ARGS, "--spec-type", "none")
    given = run_pyz(tiny_pyz, *ARGS, "-md", str(draft), "--spec-type", "draft", "--verbose")
    assert given.returncode == 0, given.stderr
    assert given.stdout == plain.stdout
    assert f"draft model: {draft}" in given.stderr
    assert "speculation (draft): drafted " in given.stderr


def test_an_incompatible_draft_is_one_sentence(tiny_pyz: Path, smollm2: Path) -> None:
    result = run_pyz(tiny_pyz, *ARGS, "-md", str(smollm2))
    assert_clean_error(result, 1, f"{smollm2} cannot be the draft model of")
    assert "its tokenizer is BPE, the model's SPM" in result.stderr


def test_spec_type_draft_without_a_draft_model_says_so(tiny_pyz: Path) -> None:
    result = run_pyz(tiny_pyz, *ARGS, "--spec-type", "draft")
    assert_clean_error(result, 1, "--spec-type draft needs a draft model: give one with -md")


@pytest.mark.slow
def test_a_draft_of_the_same_model_is_kept_and_serves(
    tmp_path: Path, session_cache: Path, smollm2: Path
) -> None:
    out = tmp_path / "s.pyz"
    env = dict(os.environ, LLAMAPYZ_CACHE=str(session_cache))
    built = pack("build", str(smollm2), "--draft", str(smollm2), "-o", str(out), env=env)
    assert built.returncode == 0, built.stderr
    args = ("-p", CODE, "-n", "40", "--temp", "0", "-t", "2", "--verbose")
    alone = run_pyz(out, *args, "--spec-type", "draft")
    plain = run_pyz(out, *args, "--spec-type", "none")
    assert alone.stdout == plain.stdout
    assert "accepted" in alone.stderr and "(100%)" in alone.stderr, alone.stderr[-500:]
    srv = Server(out, "-c", "2048", "--temp", "0", "--spec-type", "draft")
    try:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="none")
        reply = client.chat.completions.create(
            model="any", messages=[{"role": "user", "content": CODE}], max_tokens=30
        )
        timings = reply.model_extra["timings"]  # type: ignore[index]
        assert timings["draft_n"] > 0 and timings["draft_n_accepted"] == timings["draft_n"]
    finally:
        print("SERVER STDERR:", srv.stop()[-2000:])
