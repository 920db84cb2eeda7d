"""The command a user meets when running a .pyz: a one-shot completion of a prompt."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import click

from runtime import settings
from runtime.boot import archive


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
@click.option("--chat", is_flag=True, help="Chat, even when stdin is not a terminal.")
@click.option(
    "--cli", is_flag=True, help="Run in the terminal, not as a server (llamafile's flag)."
)
@click.option("--stop", multiple=True, help="End the reply where this text appears (repeatable).")
@click.option(
    "-ngl",
    "--n-gpu-layers",
    "--gpu-layers",
    type=int,
    default=0,
    help="Layers to put on a GPU (accepted for llamafile's sake; this build is CPU-only).",
)
@click.option("--rpc", "rpc_workers", help="Split the model over RPC workers: HOST:PORT,HOST:PORT.")
@click.option(
    "--tensor-split",
    help="Weights for the split, one per worker (then one for this machine with --rpc-local).",
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
@click.option("--nobrowser", is_flag=True, help="Do not open the chat page in a browser.")
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
@click.option("--system-info", is_flag=True, help="Show the CPU backend choice and exit.")
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
    from runtime import cpu, engine, grammar, rpc, templates, weights
    from runtime.listen import PortError

    opts = Options(**kw)
    try:
        if opts.clean_cache:
            _clean_cache()
            return
        if opts.rpc_worker:
            _rpc_worker(opts)
            return
        endpoints = rpc.parse_endpoints(opts.rpc_workers) if opts.rpc_workers else []
        if opts.system_info:
            _print_system_info(cpu.choose(opts.cpu_variant, fresh=True), endpoints)
            return
        if opts.chat and opts.prompt is not None:
            raise click.UsageError("give either --chat or -p, not both")
        if opts.server and opts.cli:
            raise click.UsageError("give either --server or --cli, not both")
        if opts.server and (opts.chat or opts.prompt is not None):
            raise click.UsageError("--server serves requests: it takes no -p or --chat")
        if opts.grammar_file and opts.json_schema:
            raise click.UsageError("give either --grammar or --json-schema, not both")
        source = weights.resolve(opts.model, archive())
        if source.default_args:
            opts = _with_defaults(source.default_args)
        if opts.n_gpu_layers and not endpoints:
            click.echo(
                "note: this llamapyz runs models on the CPU; it has no GPU support, "
                "so -ngl changes nothing",
                err=True,
            )
        grammar_text = _grammar(opts)
        sock = _bind(opts) if opts.server else None
        chatting = not opts.server and (opts.chat or (opts.prompt is None and sys.stdin.isatty()))
        text = "" if chatting or opts.server else _read_prompt(opts.prompt)
        engine.set_verbose(opts.verbose)
        choice = cpu.choose(opts.cpu_variant)
        if opts.verbose:
            click.echo(f"cpu variant: {choice.variant} ({choice.reason})", err=True)
        engine.start_backend(choice.path)
        offload = _offload(opts, source, endpoints) if endpoints else None
        with engine.Model(
            source,
            n_ctx=opts.ctx_size,
            n_batch=settings.N_BATCH,
            n_threads=opts.threads or settings.default_threads(),
            use_mmap=not opts.no_mmap,
            use_mlock=opts.mlock,
            n_seq_max=opts.parallel if opts.server else 1,
            offload=offload,
        ) as llm:
            if opts.server:
                _serve(llm, source, opts, grammar_text, sock)
            elif opts.embedding:
                click.echo(json.dumps(llm.embed(text)))
            elif chatting:
                _chat(llm, opts, grammar_text)
            else:
                _complete(llm, text, opts, grammar_text)
    except (
        weights.WeightsError,
        engine.EngineError,
        cpu.CpuError,
        templates.TemplateError,
        grammar.GrammarError,
        PortError,
        rpc.RpcError,
    ) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        if sys.stdout.isatty():
            sys.stdout.write("\n")
        sys.exit(130)


@dataclass
class Options:
    """Every flag of the runtime command, after click has parsed them."""

    prompt: Optional[str]
    model: Optional[str]
    n_predict: int
    ctx_size: int
    threads: Optional[int]
    temp: float
    top_k: int
    top_p: float
    min_p: float
    repeat_penalty: float
    seed: int
    chat: bool
    cli: bool
    stop: tuple[str, ...]
    n_gpu_layers: int
    rpc_workers: Optional[str]
    tensor_split: Optional[str]
    rpc_local: bool
    rpc_worker: Optional[str]
    mlock: bool
    no_mmap: bool
    server: bool
    host: str
    port: int
    api_key: Optional[str]
    nobrowser: bool
    parallel: int
    grammar_file: Optional[str]
    json_schema: Optional[str]
    embedding: bool
    system: Optional[str]
    chat_template: Optional[str]
    cpu_variant: Optional[str]
    system_info: bool
    clean_cache: bool
    verbose: bool

    def sampling(self, grammar: Optional[str] = None) -> Any:
        from runtime.engine import Sampling

        return Sampling(
            grammar=grammar,
            temp=self.temp,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            repeat_penalty=self.repeat_penalty,
            seed=0xFFFFFFFF if self.seed < 0 else self.seed,
        )


def _grammar(opts: Options) -> Optional[str]:
    from runtime import grammar

    if opts.grammar_file:
        return grammar.from_file(opts.grammar_file)
    if opts.json_schema:
        return grammar.from_schema_arg(opts.json_schema)
    return None


def _complete(llm: Any, text: str, opts: Options, grammar_text: Optional[str]) -> None:
    from runtime.stops import StopFilter

    out = sys.stdout
    stops = StopFilter(opts.stop)
    for piece in llm.generate(llm.tokenize(text), opts.n_predict, opts.sampling(grammar_text)):
        out.write(stops.feed(piece))
        out.flush()
        if stops.stopped:
            break
    out.write(stops.flush())
    if out.isatty():
        out.write("\n")


def _chat(llm: Any, opts: Options, grammar_text: Optional[str]) -> None:
    from runtime import chat, templates

    fmt = templates.choose(llm, opts.chat_template, _baked_template())
    click.echo(fmt.notice(), err=True)

    def notify(message: str) -> None:
        click.echo(message, err=True)

    conversation = chat.Conversation(
        llm, fmt, opts.sampling(grammar_text), opts.n_predict, opts.system, notify, opts.stop
    )
    chat.run(conversation)


def _baked_template() -> Optional[dict[str, str]]:
    """The chat template `pack build --chat-template` put in this file's manifest, if any."""
    found = archive()
    if found is None:
        return None
    from runtime.archive import ArchiveError, read_manifest

    try:
        value = read_manifest(found).defaults.get("chat_template")
    except ArchiveError:
        return None
    return dict(value) if isinstance(value, dict) else None


def _bind(opts: Options) -> Any:
    from runtime import listen

    return listen.bind(opts.host, opts.port)


def _serve(llm: Any, source: Any, opts: Options, grammar_text: Optional[str], sock: Any) -> None:
    import time

    from runtime import server, service, templates

    fmt = templates.choose(llm, opts.chat_template, _baked_template())
    click.echo(fmt.notice(), err=True)
    stem = Path(source.filename or source.path.name).stem
    name = llm.meta("general.name") or stem
    aliases = {name, stem, name.lower().replace(" ", "-")}
    state = server.ServerState(
        service=service.Service(llm, slots=opts.parallel),
        model=llm,
        fmt=fmt,
        model_id=name,
        aliases=aliases,
        defaults=opts.sampling(grammar_text),
        n_predict=opts.n_predict,
        stops=opts.stop,
        api_key=opts.api_key,
        created=int(time.time()),
    )
    if opts.host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(
            f"warning: listening on {opts.host}: anyone who can reach this address can use the model"
            + ("" if opts.api_key else " (no --api-key is set)"),
            err=True,
        )
    server.serve(state, sock, opts.host, open_browser=not opts.nobrowser)


def _clean_cache() -> None:
    from runtime import cleanup
    from runtime.boot import cache_dir

    removed, freed, left = cleanup.clean()
    click.echo(
        f"removed {removed} old entries ({freed / 1e6:.1f} MB) from {cache_dir()}; "
        f"it now holds {left / 1e6:.1f} MB",
        err=True,
    )


def _rpc_worker(opts: Options) -> None:
    from runtime import rpc

    endpoint = opts.rpc_worker or ""
    if ":" not in endpoint:  # a port alone: loopback, since the protocol has no authentication
        endpoint = f"127.0.0.1:{endpoint}"
    rpc.worker_main([endpoint, "--threads", str(opts.threads or settings.default_threads())])


def _offload(opts: Options, source: Any, endpoints: list[tuple[str, int]]) -> Any:
    """How the model is split over the RPC workers (and this machine, with --rpc-local)."""
    from runtime import rpc

    devices = rpc.add_servers(endpoints)
    weights = None
    if opts.tensor_split:
        try:
            weights = [float(w) for w in opts.tensor_split.split(",")]
        except ValueError:
            raise rpc.RpcError(
                f"--tensor-split {opts.tensor_split}: give numbers separated by commas"
            ) from None
    offload = rpc.plan_offload(
        devices,
        weights,
        include_local=opts.rpc_local,
        n_layer=rpc.layer_count(source.path, source.offset),
    )
    if opts.n_gpu_layers and not opts.rpc_local:
        offload.n_gpu_layers = opts.n_gpu_layers  # llama.cpp's meaning: layers sent away
    return offload


def _print_system_info(choice: object, endpoints: Optional[list[tuple[str, int]]] = None) -> None:
    from runtime import cpu, engine, rpc

    assert isinstance(choice, cpu.Choice)
    fingerprint = cpu.cpu_fingerprint().split()
    click.echo(f"machine: {fingerprint[0] if fingerprint else '?'}")
    wanted = (
        "sse4_2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512_vnni",
        "avx512_bf16",
        "avx_vnni",
        "amx_tile",
        "amx_int8",
    )
    flags = cpu.cpu_flags()
    click.echo("cpu features: " + " ".join(f for f in wanted if f in flags))
    click.echo(f"variants shipped: {', '.join(sorted(cpu.available())) or 'none'}")
    for name, why in choice.tried.items():
        click.echo(f"  {name}: {why}")
    click.echo(f"chosen: {choice.variant} ({choice.reason})")
    engine.set_verbose(False)
    engine.start_backend(choice.path)
    if endpoints:
        rpc.add_servers(endpoints)
    click.echo("devices:")
    for line in rpc.devices_summary():
        click.echo(f"  {line}")


_argv: list[str] = []  # the arguments main() parsed, the file's defaults merged in


def _with_defaults(defaults: tuple[str, ...]) -> Options:
    """The options again, with `defaults` (from an Ollama model) before the user's own."""
    ctx = click.get_current_context()
    sub = main.make_context(ctx.info_name, [*defaults, *_argv])
    return Options(**sub.params)


def _file_args() -> list[str]:
    """The default arguments baked into this .pyz (`pack build -- ARGS`, `--args-file`)."""
    found = archive()
    if found is None:
        return []
    from runtime.archive import ArchiveError, read_manifest

    try:
        return read_manifest(found).args
    except ArchiveError:
        return []  # the real error comes, with its one line, when the weights are opened


def run() -> None:
    """Entry point inside a .pyz (and for `python -m runtime`)."""
    from runtime.argsfile import merge

    if os.environ.pop("LLAMAPYZ_SHIV_ROOT_SET", None):
        os.environ.pop("SHIV_ROOT", None)
    _argv[:] = merge(_file_args(), sys.argv[1:])
    main(args=list(_argv), prog_name=_prog_name())
