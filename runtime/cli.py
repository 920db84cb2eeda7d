"""The command a user meets when running a .pyz: a one-shot completion of a prompt."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import click

from runtime.engine import settings
from runtime.engine.decoding.speculate import SPEC_TYPES
from runtime.engine.devices.gpu import WORDS as GPU_WORDS
from runtime.file.boot import archive
from runtime.options import Options


def _prog_name() -> str:
    found = archive()
    return Path(sys.argv[0]).name if found else "llamapyz"


def _version_text() -> str:
    from importlib import metadata

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "unknown"

    from runtime import __version__

    py = ".".join(str(v) for v in sys.version_info[:3])
    return f"llamapyz {__version__} (llama-cpp-python {version('llama_cpp_python')}, Python {py})"


def _show_version(ctx: click.Context, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(_version_text())
        ctx.exit()


def _read_prompt(prompt: Optional[str]) -> str:
    if prompt == "-" or (prompt is None and not sys.stdin.isatty()):
        return sys.stdin.read()
    assert prompt is not None
    return prompt


def _cors_origins(values: tuple[str, ...]) -> tuple[str, ...]:
    from runtime.serve.cors import check_origin

    for value in values:
        if not check_origin(value):
            raise click.BadParameter(
                f"{value!r} is not an origin: give scheme://host[:port], or *",
                param_hint="'--cors-origin'",
            )
    return values


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-p", "--prompt", help="Text to complete; '-' reads it from stdin.")
@click.option("-m", "--model", help="Run these weights instead: a .gguf, or another .pyz.")
@click.option(
    "-n",
    "--n-predict",
    type=int,
    default=settings.N_PREDICT,
    show_default=True,
    help="Tokens to generate; -1 until the model stops.",
)
@click.option(
    "-c",
    "--ctx-size",
    type=click.IntRange(min=0),
    default=settings.CTX_SIZE,
    show_default=True,
    help="Context size in tokens; 0 uses the model's own.",
)
@click.option(
    "-t",
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads. Default: every core this process may use.",
)
@click.option(
    "--temp",
    type=float,
    default=settings.TEMP,
    show_default=True,
    help="Temperature; 0 always picks the likeliest token.",
)
@click.option(
    "--top-k",
    type=int,
    default=settings.TOP_K,
    show_default=True,
    help="Keep the K likeliest tokens; 0 keeps all.",
)
@click.option(
    "--top-p",
    type=float,
    default=settings.TOP_P,
    show_default=True,
    help="Keep the likeliest tokens up to this total probability.",
)
@click.option(
    "--min-p",
    type=float,
    default=settings.MIN_P,
    show_default=True,
    help="Drop tokens less likely than this fraction of the likeliest.",
)
@click.option(
    "--repeat-penalty",
    type=float,
    default=settings.REPEAT_PENALTY,
    show_default=True,
    help="Penalty for repeating any of the last 64 tokens; 1 is none.",
)
@click.option(
    "--seed", type=int, default=settings.SEED, show_default=True, help="Random seed; -1 picks one."
)
@click.option(
    "--image", "images", multiple=True, metavar="FILE", help="An image for -p (repeatable)."
)
@click.option(
    "--mmproj", metavar="FILE|none", help="Vision projector: .gguf, .pyz, Ollama name; none."
)
@click.option("--no-mmproj-offload", is_flag=True, help="Keep the vision projector on the CPU.")
@click.option("--chat", is_flag=True, help="Chat, even when stdin is not a terminal.")
@click.option(
    "--cli", is_flag=True, help="Run in the terminal, not as a server (llamafile's flag)."
)
@click.option("--stop", multiple=True, help="End the reply where this text appears (repeatable).")
@click.option(
    "-ngl",
    "--n-gpu-layers",
    "--gpu-layers",
    default="auto",
    show_default=True,
    help="Layers to put on the GPU: a number, or auto (as many as fit); 0 keeps all on the CPU.",
)
@click.option(
    "--gpu",
    type=click.Choice(sorted(GPU_WORDS), case_sensitive=False),
    default="auto",
    show_default=True,
    envvar="LLAMAPYZ_GPU",
    help="GPU backend: auto, vulkan, cuda or none (llamafile's nvidia, amd, intel, disable too).",
)
@click.option("--device", "gpu_device", help="Run on these devices: Vulkan0, CUDA0,CUDA1, …")
@click.option(
    "-mg",
    "--main-gpu",
    type=click.IntRange(min=0),
    help="The device (index) for --split-mode none.",
)
@click.option(
    "-sm",
    "--split-mode",
    type=click.Choice(["none", "layer", "row"]),
    default="layer",
    show_default=True,
    help="Spread the model over several GPUs by layer, by row, or not at all.",
)
@click.option(
    "-fa",
    "--flash-attn",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="Flash attention: auto is llama.cpp's choice, but off with layers on a Vulkan device "
    "(llama.cpp's Vulkan flash attention can crash with several requests at once).",
)
@click.option(
    "--spec-type",
    type=click.Choice(list(SPEC_TYPES)),
    default=settings.SPEC_TYPE,
    show_default=True,
    help="Speculative decoding: ngram drafts from the prompt and output, draft the draft "
    "model's; auto is both (n-gram first) where there is a draft model, else ngram.",
)
@click.option(
    "-md",
    "--model-draft",
    "model_draft",
    metavar="SPEC",
    help="A draft model (.gguf, .pyz, Ollama name) with the model's vocabulary; default: the "
    "one packed in the file with --draft.",
)
@click.option(
    "-ngld",
    "--spec-draft-ngl",
    "spec_draft_ngl",
    metavar="N|auto|all",
    help="The draft model's layers on the GPU (default: as -ngl).",
)
@click.option(
    "--spec-draft-n-max",
    type=click.IntRange(min=1),
    default=settings.SPEC_DRAFT_N_MAX,
    show_default=True,
    help="The longest draft verified in one step.",
)
@click.option(
    "--spec-draft-n-min",
    type=click.IntRange(min=0),
    default=settings.SPEC_DRAFT_N_MIN,
    show_default=True,
    help="Drafts shorter than this are not verified.",
)
@click.option("--rpc", "rpc_workers", help="Split the model over RPC workers: HOST:PORT,HOST:PORT.")
@click.option(
    "--tensor-split",
    help="Weights for the split, one per device: with --rpc each worker, then each local GPU "
    "(then this machine with --rpc-local).",
)
@click.option("--rpc-local", is_flag=True, help="Keep a share of the layers on this machine too.")
@click.option(
    "--rpc-worker",
    metavar="[HOST:]PORT",
    help="Serve this machine's CPU to RPC clients (127.0.0.1 unless a host is given).",
)
@click.option("--mlock", is_flag=True, help="Keep the model in RAM (no swapping out).")
@click.option("--no-mmap", is_flag=True, help="Read the model into memory instead of mapping it.")
@click.option("--server", is_flag=True, help="Serve the OpenAI-compatible API and a chat page.")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address the server listens on."
)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--api-key", envvar="LLAMAPYZ_API_KEY", help="Require this key (Bearer) on /v1.")
@click.option(
    "--cors-origin",
    multiple=True,
    callback=lambda _c, _p, v: _cors_origins(v),
    help="Let pages from this origin call the server too, besides local ones (repeatable; *: any).",
)
@click.option(
    "-a", "--alias", help="The model's name in the server's replies (default: the file's stem)."
)
@click.option(
    "--reasoning-format",
    type=click.Choice(["deepseek", "none"]),
    default="deepseek",
    show_default=True,
    help="Server: put <think>…</think> in reasoning_content (deepseek) or leave it in the text.",
)
@click.option("--nobrowser", is_flag=True, help="Do not open the chat page in a browser.")
@click.option("--allow-remote-media", is_flag=True, help="Server: fetch http(s) image URLs.")
@click.option(
    "--media-path",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Server: file:// image URLs may name files under this folder (refused without it).",
)
@click.option(
    "-np",
    "--parallel",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Requests the server decodes together (they share the context).",
)
@click.option("--grammar", "grammar_file", help="Constrain output to a GBNF grammar file.")
@click.option(
    "-j", "--json-schema", help="Constrain output to JSON matching this schema (JSON or file)."
)
@click.option("--embedding", is_flag=True, help="Print the embedding of the prompt as JSON.")
@click.option("--system", help="System prompt for the chat.")
@click.option(
    "--chat-template",
    help="Chat format: a llama.cpp template name (chatml, llama3, …) or a .jinja file.",
)
@click.option(
    "--cpu-variant",
    envvar="LLAMAPYZ_CPU_VARIANT",
    help="Force a CPU backend variant (e.g. haswell). Env: LLAMAPYZ_CPU_VARIANT.",
)
@click.option(
    "--system-info", is_flag=True, help="Show the CPU variant and GPU device choice, and exit."
)
@click.option(
    "--clean-cache", is_flag=True, help="Remove what older builds left in the cache, and exit."
)
@click.option("--verbose", is_flag=True, help="Show llama.cpp's own log on stderr.")
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=lambda ctx, _p, value: _show_version(ctx, value),
    help="Show versions and exit.",
)
def main(**kw: Any) -> None:
    """Run the language model in this file (or -m MODEL): chat, or complete a prompt."""
    from runtime import modes, system_info
    from runtime.chat import templates
    from runtime.engine.decoding import grammar
    from runtime.engine.decoding import model as engine
    from runtime.engine.devices import cpu, gpu, variants
    from runtime.rpc.endpoints import RpcError, parse_endpoints
    from runtime.serve.listen import PortError
    from runtime.sources import resolve as weights

    opts = Options(**kw)
    try:
        if opts.clean_cache:
            modes.clean_cache()
            return
        if opts.rpc_worker:
            modes.rpc_worker(opts)
            return
        endpoints = parse_endpoints(opts.rpc_workers) if opts.rpc_workers else []
        if opts.system_info:
            system_info.show(cpu.choose(opts.cpu_variant, fresh=True), endpoints, opts)
            return
        if opts.chat and opts.prompt is not None:
            raise click.UsageError("give either --chat or -p, not both")
        if opts.server and opts.cli:
            raise click.UsageError("give either --server or --cli, not both")
        if opts.server and (opts.chat or opts.prompt is not None):
            raise click.UsageError("--server serves requests: it takes no -p or --chat")
        if opts.images and (opts.prompt is None or opts.server or opts.embedding):
            raise click.UsageError("--image goes with -p (in a chat: /image PATH)")
        if opts.grammar_file and opts.json_schema:
            raise click.UsageError("give either --grammar or --json-schema, not both")
        source = weights.resolve(opts.model, archive())
        if source.default_args:
            opts = _with_defaults(source.default_args)
        grammar_text = modes.grammar_for(opts)
        sock = modes.bind(opts) if opts.server else None
        chatting = not opts.server and (opts.chat or (opts.prompt is None and sys.stdin.isatty()))
        text = "" if chatting or opts.server else _read_prompt(opts.prompt)
        projector, pictures = modes.vision_inputs(opts, chatting)
        engine.set_verbose(opts.verbose)
        choice = cpu.choose(opts.cpu_variant)
        if opts.verbose:
            click.echo(f"cpu variant: {choice.variant} ({choice.reason})", err=True)
        engine.start_backend(choice.path)
        offload = modes.offload(opts, source, endpoints, choice) if endpoints else None
        if opts.server:  # the server answers 503 while the model loads
            modes.serve(
                lambda: modes.open_model(opts, source, offload, choice),
                source,
                opts,
                grammar_text,
                sock,
                projector,
            )
            return
        with modes.loaded(opts, source, offload, choice, projector) as (llm, vision):
            modes.speculate(llm, opts)
            if opts.embedding:
                click.echo(json.dumps(llm.embed(text)))
            elif chatting:
                modes.chat(llm, opts, grammar_text, vision)
            else:
                modes.complete(llm, text, opts, grammar_text, vision, pictures)
                if opts.verbose and llm.speculation is not None:
                    click.echo(llm.speculation.summary(images=bool(pictures)), err=True)
    except (
        weights.WeightsError,
        engine.EngineError,
        variants.CpuError,
        templates.TemplateError,
        grammar.GrammarError,
        gpu.GpuError,
        PortError,
        RpcError,
    ) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        if sys.stdout.isatty():
            sys.stdout.write("\n")
        sys.exit(130)


_argv: list[str] = []  # the arguments main() parsed, the file's defaults merged in


def _with_defaults(defaults: tuple[str, ...]) -> Options:
    """The options again, with `defaults` (from an Ollama model) before the user's own."""
    ctx = click.get_current_context()
    sub = main.make_context(ctx.info_name, [*defaults, *_argv])
    return Options(**sub.params)


def run() -> None:
    """Entry point inside a .pyz (and for `python -m runtime`)."""
    from runtime.sources.argsfile import baked, merge

    if os.environ.pop("LLAMAPYZ_SHIV_ROOT_SET", None):
        os.environ.pop("SHIV_ROOT", None)
    _argv[:] = merge(baked(archive()), sys.argv[1:])
    main(args=list(_argv), prog_name=_prog_name())
