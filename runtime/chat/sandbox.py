"""The Jinja sandbox a model's chat template runs in, with limits on time and output.

A template comes from the GGUF, so from whoever made the file: Jinja's immutable sandbox keeps
it from reaching Python, and this one also keeps it from running for ever or filling memory.
Time is checked at every call, attribute, item, operator and loop step the template takes;
sizes where a template can make a big string or list in one step (`*`, `+`, padding, joins)
and on what it has written so far. A recursion ends in Python's RecursionError.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterable, Iterator
from typing import Any, Callable

TIME_LIMIT_S = 2.0
MAX_OUTPUT = 4 * 1024 * 1024  # characters of prompt, or items of a list
MAX_EXPONENT = 256
PADDING = ("center", "ljust", "rjust", "zfill", "expandtabs")
ITER = "__llamapyz_iter"
CONCAT = "__llamapyz_concat"
WIDTH = re.compile(r"(\d{7,})")


class LimitExceeded(Exception):
    """A template went past a limit; the message says which, as the end of a sentence."""


def render(source: str, context: dict[str, Any], globals_: dict[str, Any]) -> str:
    """`source` rendered with `context`, within the limits."""
    env = _environment_class()(trim_blocks=True, lstrip_blocks=True)
    env.globals.update(globals_)
    template = env.from_string(source)
    env.deadline = time.monotonic() + TIME_LIMIT_S
    parts: list[str] = []
    written = 0
    for chunk in template.generate(**context):
        written += len(chunk)
        if written > MAX_OUTPUT:
            raise LimitExceeded(f"wrote more than {MAX_OUTPUT} characters")
        env.tick()
        parts.append(chunk)
    return "".join(parts)


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else 0


def _check_size(value: Any) -> Any:
    if _size(value) > MAX_OUTPUT:
        raise LimitExceeded(f"made a value of more than {MAX_OUTPUT} characters or items")
    return value


def _check_args(args: Iterable[Any]) -> None:
    for a in args:
        if isinstance(a, int) and not isinstance(a, bool) and a > MAX_OUTPUT:
            raise LimitExceeded(f"asked for a size of {a}, more than {MAX_OUTPUT}")


def _check_join(items: Iterable[Any]) -> list[Any]:
    """`items` as a list, if joining them stays within the limit."""
    listed = list(items)
    _check_args([sum(_size(i) for i in listed)])
    return listed


def _check_format(text: Any) -> None:
    """A format string may not ask for a width past the limit ('%0999999999d', '{:>9999999999}')."""
    if isinstance(text, str):
        for width in WIDTH.findall(text):
            _check_args([int(width)])


def _limited_filter(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(f)  # keeps jinja's pass_context and the like
    def run(*args: Any, **kwargs: Any) -> Any:
        values = [a for a in args if not _is_jinja_state(a)]
        _check_args(values[1:])
        _check_args(kwargs.values())
        if values and name == "join":
            at = args.index(values[0])
            args = (*args[:at], _check_join(values[0]), *args[at + 1 :])
        elif values and name == "format":
            _check_format(values[0])
        return _check_size(f(*args, **kwargs))

    return run


def _is_jinja_state(value: Any) -> bool:
    """The context, eval context or environment jinja passes to some filters first."""
    return type(value).__module__.startswith("jinja2.") and not isinstance(value, str)


def _concat(*parts: Any) -> str:
    """Jinja's `~`, within the limit."""
    text = [str(p) for p in parts]
    _check_args([sum(len(t) for t in text)])
    return "".join(text)


@functools.cache
def _environment_class() -> Any:
    """The sandbox class, made on first use: jinja is imported only when a template runs."""
    from jinja2 import nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.visitor import NodeTransformer

    class Limited(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "+", "%"})

        def __init__(self, **options: Any) -> None:
            super().__init__(**options)
            self.deadline = time.monotonic() + TIME_LIMIT_S
            self.filters = {k: _limited_filter(k, f) for k, f in self.filters.items()}
            self.globals[ITER] = self.iterate
            self.globals[CONCAT] = _concat
            self.globals["range"] = self.range

        def tick(self) -> None:
            if time.monotonic() > self.deadline:
                raise LimitExceeded(f"ran for more than {TIME_LIMIT_S:g} s")

        def iterate(self, items: Any) -> Iterator[Any]:
            for item in items:
                self.tick()
                yield item

        def range(self, *args: int) -> range:
            r = range(*args)
            if len(r) > MAX_OUTPUT:
                raise LimitExceeded(f"asked for a range of {len(r)} numbers")
            return r

        def _parse(self, source: str, name: Any, filename: Any) -> Any:
            tree = _Guard().visit(super()._parse(source, name, filename))
            tree.set_environment(self)
            return tree

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            __self.tick()
            # str.format comes wrapped by the sandbox's getattr: look through it
            owner = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
            name = getattr(__obj, "__name__", "")
            if isinstance(owner, str) and name in PADDING:
                _check_args(args)
            elif isinstance(owner, str) and name == "join" and args:
                args = (_check_join(args[0]), *args[1:])
            elif isinstance(owner, str) and name in ("format", "format_map"):
                _check_format(owner)
            elif isinstance(owner, str) and name == "replace" and len(args) >= 2:
                old, new = args[0], args[1]
                if isinstance(old, str) and isinstance(new, str) and len(new) > len(old):
                    grows = owner.count(old) if old else len(owner) + 1
                    _check_args([len(owner) + grows * (len(new) - len(old))])
            return _check_size(super().call(__context, __obj, *args, **kwargs))

        def getattr(self, obj: Any, attribute: str) -> Any:
            self.tick()
            return super().getattr(obj, attribute)

        def getitem(self, obj: Any, argument: Any) -> Any:
            self.tick()
            return super().getitem(obj, argument)

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            self.tick()
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if _size(seq) and isinstance(n, int):
                        _check_args([_size(seq) * n])
            elif operator == "**" and isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
                if isinstance(left, int) and left not in (-1, 0, 1):
                    raise LimitExceeded(f"raised a number to the power {right}")
            elif operator == "+" and _size(left) and _size(right):
                _check_args([_size(left) + _size(right)])
            elif operator == "%":
                _check_format(left)
            return _check_size(super().call_binop(context, operator, left, right))

    class _Guard(NodeTransformer):
        """Every loop steps through iterate(); every `~` goes through _concat()."""

        def visit_For(self, node: Any) -> Any:
            self.generic_visit(node)
            node.iter = nodes.Call(
                nodes.Name(ITER, "load"), [node.iter], [], None, None, lineno=node.lineno
            )
            return node

        def visit_Concat(self, node: Any) -> Any:
            self.generic_visit(node)
            return nodes.Call(
                nodes.Name(CONCAT, "load"), list(node.nodes), [], None, None, lineno=node.lineno
            )

    return Limited
