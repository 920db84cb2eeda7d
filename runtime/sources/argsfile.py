"""Default arguments baked into a file, with llamafile's `.args` rules: shell-like words and `...`.

`shlex.split(text, comments=True)` is close but not the same: it ends a word at `#` (`a#b`
gives `a`), keeps the backslash in `"\\$"`, and keeps a backslash-newline inside double quotes.
POSIX shells and llamafile's own parser (cosmo_args) do none of that, so the words are split
here by a small state machine instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

PLACEHOLDER = "..."
# Inside double quotes a backslash escapes only these; before anything else it stays (POSIX).
_DQUOTE_ESCAPES = '"\\$`\n'
_WHITESPACE = " \t\r\n\f\v"


class ArgsError(Exception):
    """Default arguments that cannot be split into words."""


def parse_args_text(text: str, where: str = "the default arguments") -> list[str]:
    """Split `text` into words as a POSIX shell does, without expansions; `#` starts a comment.

    Whitespace separates words; single quotes keep everything literal; inside double quotes a
    backslash escapes `"`, `\\`, `$`, a backquote and a newline (and is kept before anything
    else); outside quotes a backslash escapes any character, and a backslash-newline joins
    lines. `#` starts a comment to the end of the line only where a word could start, so
    `a#b` is one word. `$VAR` is not expanded. `where` names the text in error messages.
    """
    words: list[str] = []
    word: list[str] = []
    in_word = False  # a word has started, even if empty so far (`''` is an empty argument)
    quote = ""  # the quote we are inside, if any
    quote_at = 0
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        i += 1
        if quote == "'":
            if c == "'":
                quote = ""
            else:
                word.append(c)
        elif quote == '"':
            if c == '"':
                quote = ""
            elif c == "\\" and i < n and text[i] in _DQUOTE_ESCAPES:
                if text[i] != "\n":  # backslash-newline is a line continuation: both vanish
                    word.append(text[i])
                i += 1
            else:
                word.append(c)
        elif c in _WHITESPACE:
            if in_word:
                words.append("".join(word))
                word = []
                in_word = False
        elif c == "#" and not in_word:
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif c == "\\":
            if i == n:
                word.append(c)  # a lone backslash at the very end stays, as in sh and bash
                in_word = True
            elif text[i] == "\n":
                i += 1  # a line continuation: it neither ends nor starts a word
            else:
                word.append(text[i])
                i += 1
                in_word = True
        elif c in "'\"":
            quote = c
            quote_at = i - 1
            in_word = True
        else:
            word.append(c)
            in_word = True
    if quote:
        kind = "single" if quote == "'" else "double"
        line_no = text.count("\n", 0, quote_at) + 1
        source_line = text.splitlines()[line_no - 1].strip()
        raise ArgsError(
            f"line {line_no} of {where} opens a {kind} quote that is never closed: {source_line}"
        )
    if in_word:
        words.append("".join(word))
    return words


def merge(defaults: list[str], user: list[str]) -> list[str]:
    """The defaults with the user's arguments in place of the first bare `...`, else at the end.

    Only the first `...` is replaced; any later `...` is dropped, so the user's arguments
    appear exactly once (as llamafile does). Without a `...` they follow the defaults, so a
    user's flag comes later and wins over a default one.
    """
    if PLACEHOLDER not in defaults:
        return [*defaults, *user]
    at = defaults.index(PLACEHOLDER)
    rest = [a for a in defaults[at + 1 :] if a != PLACEHOLDER]
    return [*defaults[:at], *user, *rest]


def baked(pyz: Optional[Path]) -> list[str]:
    """The default arguments baked into the .pyz `pyz` (`pack build -- ARGS`, `--args-file`)."""
    if pyz is None:
        return []
    from runtime.file.archive import ArchiveError, read_manifest

    try:
        return read_manifest(pyz).args
    except ArchiveError:
        return []  # the real error comes, with its one line, when the weights are opened
