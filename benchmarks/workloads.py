"""The speculation rows' workloads: prompts written for this project, a fresh one for every
repetition (other names and numbers), so that no cache anywhere replays an earlier result.

Each is a /v1/completions prompt in SmolLM2's chat format (ChatML), ending where the answer
begins (for the code edit, after its first lines, as an editor's completion has them: a 135M
model follows that). `copy_ratio` says how much of an answer the prompt already held.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

NAMES = ["alder", "birch", "cedar", "dogwood", "elm", "fir", "ginkgo", "hazel", "juniper"]
CITIES = ["Lisbon", "Oslo", "Quito", "Hanoi", "Perth", "Dakar", "Lima", "Riga", "Cairo"]
TOPICS = ["a lighthouse keeper", "a clockmaker's apprentice", "a lost kite", "a desert well"]


def _chat(user: str, start: str = "") -> str:
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{start}"


def code_edit(i: int) -> str:
    r = random.Random(i)
    fn, var = r.choice(NAMES) + f"_{i}", r.choice(["acc", "value", "x"])
    rate = r.randint(2, 19)
    code = (
        f"def {fn}(items):\n"
        f"    {var} = 0\n"
        f"    for item in items:\n"
        f"        {var} += item.price * item.quantity * {rate} / 100\n"
        f"    return round({var}, 2)\n"
    )
    # The answer's first two lines are given, as an editor's completion would have them.
    return _chat(
        f"Here is a function:\n\n```python\n{code}```\n\nRename `{var}` to `total` and "
        "return the whole function.",
        f"```python\ndef {fn}(items):\n    total = 0\n",
    )


def _passage(r: random.Random) -> str:
    city, other = r.sample(CITIES, 2)
    n = r.randint(3, 40)
    return (
        f"The ferry from {city} left at dawn with {n} passengers and a crate of oranges. "
        f"By noon the wind had turned, and the captain steered toward {other} instead. "
        f"Nobody complained: the oranges were shared, and the children counted gulls "
        f"until the harbour lights of {other} came into view."
    )


def quote(i: int) -> str:
    r = random.Random(1000 + i)
    # Asked as a chat: SmolLM2-135M quotes it (copy ratio 0.9-1.0); as a bare completion
    # ('... quoted exactly, word for word: "') it wrote other text (copy ratio 0).
    return _chat(f"Passage:\n{_passage(r)}\n\nQuote the passage exactly, word for word.")


def rag(i: int) -> str:
    r = random.Random(2000 + i)
    facts = [
        f"{name.title()} Station opened in {r.randint(1890, 2010)} and serves "
        f"{r.randint(2, 40)} thousand travellers a day on the {r.choice(CITIES)} line."
        for name in r.sample(NAMES, 5)
    ]
    asked = facts[r.randrange(len(facts))].split(" Station")[0]
    document = "\n".join(f"- {f}" for f in facts)
    return _chat(
        f"Document:\n{document}\n\nUsing only the document, answer: when did {asked} Station "
        "open, and how many travellers does it serve? Answer with the document's sentence."
    )


def summary(i: int) -> str:
    r = random.Random(3000 + i)
    text = " ".join(_passage(r) for _ in range(3))
    return _chat(f"Text:\n{text}\n\nSummarize the text in three sentences.")


def json_rewrite(i: int) -> str:
    r = random.Random(4000 + i)
    rows = [
        f"{name.title()}, {r.randint(18, 80)}, {r.choice(CITIES)}" for name in r.sample(NAMES, 4)
    ]
    listing = "\n".join(rows)
    return _chat(
        f"Records (name, age, city):\n{listing}\n\nRewrite the records as a JSON list of "
        'objects with the keys "name", "age" and "city".',
        "```json\n[\n",
    )


def second_turn(i: int) -> str:
    r = random.Random(5000 + i)
    first = _passage(r)
    return (
        "<|im_start|>user\nWrite a short paragraph about a ferry.<|im_end|>\n"
        f"<|im_start|>assistant\n{first}<|im_end|>\n"
        "<|im_start|>user\nRepeat your paragraph, but make the ferry a train.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def free_form(i: int) -> str:
    r = random.Random(6000 + i)
    return _chat(f"Write a short story about {r.choice(TOPICS)} in {r.choice(CITIES)}.")


WORKLOADS: dict[str, Callable[[int], str]] = {
    "code edit": code_edit,
    "verbatim quote": quote,
    "RAG": rag,
    "summary": summary,
    "JSON rewrite": json_rewrite,
    "chat second turn": second_turn,
    "free-form": free_form,
}

_WORD = re.compile(r"\w+|[^\w\s]")


def copy_ratio(prompt: str, output: str, n: int = 4) -> float:
    """The share of the output's word n-grams that the prompt holds."""
    have, said = _WORD.findall(prompt), _WORD.findall(output)
    known = {tuple(have[i : i + n]) for i in range(len(have) - n + 1)}
    grams = [tuple(said[i : i + n]) for i in range(len(said) - n + 1)]
    return sum(g in known for g in grams) / len(grams) if grams else 0.0
