"""Default arguments: llamafile's `.args` words, checked against a real POSIX shell, and `...`."""

from __future__ import annotations

import shlex
import shutil
import subprocess

import pytest

from runtime.sources.argsfile import ArgsError, merge, parse_args_text

# (text, words, a POSIX shell splits it the same way). The shell comparison is left out where
# the text spans lines outside quotes (a newline ends a shell command) or holds `~`/`*`/`?`,
# which a shell would expand.
CASES = [
    ("", [], True),
    ("   \t  ", [], True),
    ("-m model.gguf", ["-m", "model.gguf"], True),
    ("-m\nmodel.gguf\n--temp\n0\n", ["-m", "model.gguf", "--temp", "0"], False),
    ("  -c   2048\t-n 5  ", ["-c", "2048", "-n", "5"], True),
    ("-p 'hello world'", ["-p", "hello world"], True),
    ('-p "hello world"', ["-p", "hello world"], True),
    ("'it''s'", ["its"], True),
    ('"it\'s"', ["it's"], True),
    ("'a \"b\" c'", ['a "b" c'], True),
    ("'back\\slash' '$HOME'", ["back\\slash", "$HOME"], True),
    ('"a\\"b"', ['a"b'], True),
    ('"a\\\\b"', ["a\\b"], True),
    ('"\\$HOME"', ["$HOME"], True),
    ('"\\`"', ["`"], True),
    ('"\\n stays"', ["\\n stays"], True),
    ('"one\\\ntwo"', ["onetwo"], True),
    ('"two\nlines"', ["two\nlines"], True),
    ("a\\ b", ["a b"], True),
    ("\\'quoted\\'", ["'quoted'"], True),
    ("\\#not-a-comment", ["#not-a-comment"], True),
    ("one\\\ntwo", ["onetwo"], True),
    ("one \\\n two", ["one", "two"], True),
    ("ends\\", ["ends\\"], True),
    ("'' \"\"", ["", ""], True),
    ("pre'mid'post", ["premidpost"], True),
    ("# a comment\n-m x.gguf", ["-m", "x.gguf"], False),
    ("-n 5 # five tokens", ["-n", "5"], True),
    ("-n 5 # five tokens\n--temp 0", ["-n", "5", "--temp", "0"], False),
    ("a#b", ["a#b"], True),
    ("'a'#b", ["a#b"], True),
    ("'#' \"#\"", ["#", "#"], True),
    ("-p ' # kept '", ["-p", " # kept "], True),
    ("-c 0 ...", ["-c", "0", "..."], True),
    ("... -c 0", ["...", "-c", "0"], True),
    ("x...y", ["x...y"], True),
    ("-p caf\u00e9", ["-p", "caf\u00e9"], True),
]


@pytest.mark.parametrize(("text", "words", "_sh"), CASES)
def test_parse_args_text(text: str, words: list[str], _sh: bool) -> None:
    assert parse_args_text(text) == words


SH = shutil.which("sh")


@pytest.mark.skipif(SH is None, reason="no POSIX shell")
@pytest.mark.parametrize("text", [text for text, _, sh in CASES if sh])
def test_a_posix_shell_splits_the_same_words(text: str) -> None:
    # printf repeats its format for each argument; NUL cannot occur inside an argument.
    assert SH is not None
    out = subprocess.run(
        [SH, "-c", "printf '%s\\0' " + text], capture_output=True, check=True
    ).stdout
    shell_words = out.decode().split("\0")[:-1] if text.strip() and out else []
    assert parse_args_text(text) == shell_words


@pytest.mark.parametrize(
    "text",
    [
        "a#b",  # shlex ends the word at #
        '"\\$HOME"',  # shlex keeps the backslash
        '"one\\\ntwo"',  # shlex keeps backslash-newline inside double quotes
    ],
)
def test_shlex_is_not_the_same(text: str) -> None:
    # Why argsfile does not simply call shlex.split(text, comments=True).
    assert shlex.split(text, comments=True) != parse_args_text(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "-m x.gguf\n-p 'hello\n",
            "line 2 of the default arguments opens a single quote that is never closed: -p 'hello",
        ),
        (
            '-p "unclosed',
            "line 1 of the default arguments opens a double quote that is never closed: "
            '-p "unclosed',
        ),
        (
            '# "in a comment" is fine\n-n 5\n-p "a\\"\n',
            'line 3 of the default arguments opens a double quote that is never closed: -p "a\\"',
        ),
        (
            "-p 'it's'",
            "line 1 of the default arguments opens a single quote that is never closed: -p 'it's'",
        ),
    ],
)
def test_unterminated_quote_names_the_line(text: str, message: str) -> None:
    with pytest.raises(ArgsError) as info:
        parse_args_text(text)
    assert str(info.value) == message


def test_error_names_where_the_text_came_from() -> None:
    with pytest.raises(ArgsError, match=r"^line 1 of model\.pyz's \.args opens a double quote"):
        parse_args_text('"', where="model.pyz's .args")


@pytest.mark.parametrize(
    ("defaults", "user", "merged"),
    [
        (["-c", "0", "...", "--temp", "0"], ["-p", "hi"], ["-c", "0", "-p", "hi", "--temp", "0"]),
        (["...", "-c", "0"], ["-p", "hi"], ["-p", "hi", "-c", "0"]),
        (["-c", "0", "..."], ["-p", "hi"], ["-c", "0", "-p", "hi"]),
        (["-c", "0"], ["-p", "hi"], ["-c", "0", "-p", "hi"]),
        (["-c", "0", "...", "-n", "5"], [], ["-c", "0", "-n", "5"]),
        (["-c", "0"], [], ["-c", "0"]),
        ([], ["-p", "hi"], ["-p", "hi"]),
        (["..."], [], []),
        (["-c", "0", "...", "-n", "5", "...", "-t", "2"], ["-p", "hi"],
         ["-c", "0", "-p", "hi", "-n", "5", "-t", "2"]),
        (["-c", "0", "..."], ["..."], ["-c", "0", "..."]),  # the user's own `...` is theirs
    ],
)  # fmt: skip
def test_merge(defaults: list[str], user: list[str], merged: list[str]) -> None:
    assert merge(defaults, user) == merged


def test_merge_does_not_change_its_arguments() -> None:
    defaults, user = ["-c", "0", "..."], ["-p", "hi"]
    merge(defaults, user)
    assert defaults == ["-c", "0", "..."] and user == ["-p", "hi"]


def test_parse_then_merge() -> None:
    text = "# baked in by pack build\n-c 2048 --temp 0.7\n...\n-n 64\n"
    merged = merge(parse_args_text(text), ["-p", "Why is the sky blue?"])
    assert merged == ["-c", "2048", "--temp", "0.7", "-p", "Why is the sky blue?", "-n", "64"]
