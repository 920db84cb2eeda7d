"""The terminal chat: a conversation formatted by the model's chat template, replies streamed."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, TextIO

from runtime.chat import templates
from runtime.chat.stops import StopFilter
from runtime.engine.backend import EngineError
from runtime.engine.media.vision import VisionError

HELP = """commands:
  /reset    forget the conversation (the system prompt stays)
  /exit     quit (also /bye, Ctrl-D)
  /help     this list
  /image PATH  attach an image to the next message (a path alone on a line does too)
  \"\"\"       start or end a message of several lines (a line ending in \\ continues too)
Ctrl-C stops a reply; at the prompt, press it twice to quit."""
PROMPT = ">>> "
MORE = "... "


class Conversation:
    """Messages, the format that renders them, and the model that answers."""

    def __init__(
        self,
        model: Any,
        fmt: templates.ChatFormat,
        sampling: Any,
        n_predict: int,
        system: Optional[str],
        notify: Any,
        stops: tuple[str, ...] = (),
    ) -> None:
        self.model = model
        self.fmt = fmt
        self.sampling = sampling
        self.n_predict = n_predict
        self.system = system
        self.notify = notify
        self.stops = tuple(fmt.stops) + tuple(stops)
        self.messages: list[templates.Message] = []
        self.vision: Any = None  # engine.media.vision.Vision, where the model has a projector
        self.attached: list[Any] = []  # images for the next message (engine.media.vision.Image)
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def _prompt_tokens(self) -> list[int]:
        reserve = min(self.n_predict if self.n_predict > 0 else 256, self.model.n_ctx // 4)
        while True:
            text = templates.render(self.fmt, self.messages, self.model)
            images = [i for m in self.messages for i in m.get("images", ())]
            if images:  # engine.media.vision.Prompt: tokens, each image's among them
                tokens: list[int] = self.vision.prompt(text, images, fits=False)
            else:
                tokens = self.model.tokenize(text)
            if len(tokens) + reserve <= self.model.n_ctx:
                return tokens
            first = 1 if self.messages and self.messages[0]["role"] == "system" else 0
            if len(self.messages) - first <= 1:
                raise templates.TemplateError(
                    f"the message is {len(tokens)} tokens, too long for the context of "
                    f"{self.model.n_ctx} tokens (raise -c)"
                )
            # Drop the oldest exchange: a user turn and the reply that followed it.
            del self.messages[first : first + 2]
            self.notify(
                f"(the conversation outgrew the context of {self.model.n_ctx} tokens: "
                "the oldest turn was dropped)"
            )

    def attach(self, path: str) -> str:
        """Attach the image at `path` to the next message; what to tell the user."""
        from runtime.engine.media import vision

        if self.vision is None:
            raise vision.VisionError(vision.NO_PROJECTOR)
        image = vision.read_images((str(Path(path).expanduser()),))
        self.vision.prompt(
            self.vision.marker, image, fits=False
        )  # decodes: a damaged one fails now
        self.attached += image
        return f"(attached {path}: it goes with your next message)"

    def reply(self, user_text: str) -> Iterator[str]:
        """Add the user's message and stream the model's reply; the reply joins the history.
        Text holding mtmd's marker is refused where the model sees images (it would stand
        for an image that is not there)."""
        if self.vision is not None and self.vision.marker in user_text:
            raise VisionError(
                f"{self.vision.marker} stands for an image here: attach images with /image "
                "PATH (the message was not sent)"
            )
        message: templates.Message = {"role": "user", "content": user_text}
        if self.attached:  # mtmd's marker before the text, one per image, as mtmd-cli does
            message["content"] = self.vision.marker * len(self.attached) + user_text
            message["images"], self.attached = self.attached, []
        self.messages.append(message)
        answer: list[str] = []
        try:
            tokens = self._prompt_tokens()
            stops = StopFilter(self.stops)
            for piece in self.model.generate(tokens, self.n_predict, self.sampling):
                text = stops.feed(piece)
                if text:
                    answer.append(text)
                    yield text
                if stops.stopped:
                    break
            tail = stops.flush()
            if tail:
                answer.append(tail)
                yield tail
        finally:
            # Even a reply cut short by Ctrl-C stays in the conversation, as it was shown.
            self.messages.append({"role": "assistant", "content": "".join(answer).strip()})


def read_message(stdin: TextIO, err: TextIO, interactive: bool) -> Optional[str]:
    """One message from the user: a line, a \\-continued line, or a \"\"\"-block; None at EOF."""

    def ask(prompt: str) -> str:
        if interactive:
            err.write(prompt)
            err.flush()
            return input()
        line = stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    line = ask(PROMPT)
    if line.strip().startswith('"""'):
        first = line.strip()[3:]
        if first.endswith('"""') and first:
            return first[:-3]
        lines = [first] if first else []
        while True:
            more = ask(MORE)
            if more.rstrip().endswith('"""'):
                lines.append(more.rstrip()[:-3])
                return "\n".join(lines)
            lines.append(more)
    lines = []
    while line.endswith("\\"):
        lines.append(line[:-1])
        line = ask(MORE)
    lines.append(line)
    return "\n".join(lines)


def run(
    conversation: Conversation,
    stdin: TextIO = sys.stdin,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> None:
    """The chat loop: read, reply, until /exit, Ctrl-D, or Ctrl-C twice at the prompt."""
    interactive = stdin.isatty()
    if interactive:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
        err.write("chat: /help for commands, /exit or Ctrl-D to quit\n")
    interrupted = False
    while True:
        try:
            message = read_message(stdin, err, interactive)
        except EOFError:
            if interactive:
                err.write("\n")
            return
        except KeyboardInterrupt:
            if interrupted:
                err.write("\n")
                return
            interrupted = True
            err.write("\n(press Ctrl-C again or Ctrl-D to quit)\n")
            continue
        interrupted = False
        if message is None:
            return
        command = message.strip()
        if command in ("/exit", "/bye", "/quit"):
            return
        if command in ("/reset", "/clear"):
            conversation.reset()
            err.write("(the conversation was reset)\n")
            continue
        if command in ("/help", "/?"):
            err.write(HELP + "\n")
            continue
        path = command[len("/image ") :].strip() if command.startswith("/image ") else ""
        if path or _image_path(command):
            try:
                err.write(conversation.attach(path or _image_path(command)) + "\n")
            except EngineError as exc:  # a bad image: one line says why, the chat goes on
                err.write(f"Error: {exc}\n")
            continue
        if not command:
            continue
        try:
            for text in conversation.reply(message):
                out.write(text)
                out.flush()
            out.write("\n")
            out.flush()
        except KeyboardInterrupt:
            out.write("\n")
            out.flush()
            err.write("(stopped)\n")
        except VisionError as exc:  # one line says why, the chat goes on
            err.write(f"Error: {exc}\n")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".ppm", ".pgm", ".pnm")


def _image_path(line: str) -> str:
    """The path of an image file that `line` is alone (quoted, as a terminal drops it), or ""."""
    path = line.strip().strip("'\"")
    if "\n" in path or not path.lower().endswith(IMAGE_SUFFIXES):
        return ""
    return path if Path(path).expanduser().is_file() else ""
