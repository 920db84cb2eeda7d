"""What the runtime command does once its flags are parsed: complete, chat, serve, embed,
be an RPC worker, show the system, clean the cache."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any, Optional

import click

from runtime.engine import settings
from runtime.file.boot import archive
from runtime.options import Options


def grammar_for(opts: Options) -> Optional[str]:
    from runtime.engine.decoding import grammar

    if opts.grammar_file:
        return grammar.from_file(opts.grammar_file)
    if opts.json_schema:
        return grammar.from_schema_arg(opts.json_schema)
    return None


def complete(
    llm: Any, text: str, opts: Options, grammar_text: Optional[str], seen: Any, images: list[Any]
) -> None:
    from runtime.chat.stops import StopFilter
    from runtime.engine.media import vision

    out = sys.stdout
    stops = StopFilter(opts.stop)
    prompt = vision.one_shot(seen, text, images) if images else llm.tokenize(text)
    if opts.verbose:  # with images: "prompt: 40 tokens (16 for 1 image)"
        click.echo(f"prompt: {len(prompt)} tokens{vision.counted(prompt)}", err=True)
    for piece in llm.generate(prompt, opts.n_predict, opts.sampling(grammar_text)):
        out.write(stops.feed(piece))
        out.flush()
        if stops.stopped:
            break
    out.write(stops.flush())
    if out.isatty():
        out.write("\n")


def drafters(llm: Any, opts: Options) -> Any:
    """What makes each sequence's drafter under the flags (with the draft model open_model
    loaded, if any), or None (also where the model's memory cannot drop draft tokens again,
    which --verbose says)."""
    from runtime.engine.decoding import speculate as spec

    new = spec.drafters(opts.spec_type, opts.spec_draft_n_max, opts.spec_draft_n_min, llm.draft)
    if new is not None and not spec.can_roll_back(llm):
        if opts.verbose:
            click.echo("speculation: off (this model's memory cannot drop draft tokens)", err=True)
        return None
    return new


def speculate(llm: Any, opts: Options) -> None:
    """Give the model the drafter -p and chat use."""
    from runtime.engine.decoding import speculate as spec

    new = drafters(llm, opts)
    llm.speculation = (
        None
        if new is None
        else spec.Speculation(new(0), spec.chosen(opts.spec_type, llm.draft is not None))
    )


def open_draft(opts: Options, source: Any, llm: Any, rpc_offload: Any, choice: Any) -> Any:
    """The draft model for `llm` (-md, else the one packed beside it), where the flags use
    one; its vocabulary checked against the model's: a mismatch is one sentence."""
    from dataclasses import replace

    from runtime.engine.decoding import draft, speculate
    from runtime.engine.decoding import model as engine
    from runtime.engine.devices import gpu
    from runtime.sources import resolve

    kind = opts.spec_type.lower()
    if kind == "none" or kind in speculate.NGRAM_NAMES:
        return None
    found = resolve.draft_for(opts.model_draft, source)
    if found is None:
        if kind in speculate.DRAFT_NAMES:
            raise engine.EngineError(
                f"--spec-type {opts.spec_type} needs a draft model: give one with -md, or pack "
                "one into the file with pack build --draft"
            )
        return None
    plan = None
    if rpc_offload is None:
        plan = gpu_plan(
            replace(opts, n_gpu_layers=opts.spec_draft_ngl or opts.n_gpu_layers), found, choice
        )
    backends = [d.backend for d in plan.devices] if plan else []
    model = engine.Model(
        found,
        n_ctx=llm.n_ctx,
        offload=plan.offload if plan else None,
        flash_attn=gpu.flash_attn(opts.flash_attn, backends),
        **_loading(opts),
    )
    why = draft.vocab_mismatch(llm, model)
    if why:
        model.close()
        raise engine.EngineError(
            f"{found.label} cannot be the draft model of {source.label}: {why}"
        )
    if opts.verbose:
        click.echo(f"draft model: {found.label}", err=True)
    return draft.DraftModel(model)


def vision_inputs(opts: Options, chatting: bool) -> tuple[Any, list[Any]]:
    """The projector (where -p has --image, a chat may attach one, or the server may be sent
    one) and --image's files."""
    from runtime.engine.media import vision

    wanted = bool(opts.images or chatting or opts.server) and not opts.embedding
    return vision.inputs(opts.mmproj, opts.model, opts.images, archive()) if wanted else (None, [])


@contextlib.contextmanager
def loaded(opts: Options, source: Any, rpc: Any, choice: Any, proj: Any) -> Iterator[Any]:
    """The model, and its vision projector (on the model's GPU) where it has one."""
    from runtime.engine.media import vision

    with open_model(opts, source, rpc, choice) as llm:
        devices = [] if opts.no_mmproj_offload else llm.gpu_devices
        seen = vision.open_for(llm, proj, devices, opts.threads or settings.default_threads())
        with seen or contextlib.nullcontext():
            yield llm, seen


def chat(llm: Any, opts: Options, grammar_text: Optional[str], seen: Any = None) -> None:
    from runtime.chat import conversation as chat
    from runtime.chat import templates

    fmt = templates.choose(llm, opts.chat_template, baked_template())
    click.echo(fmt.notice(), err=True)

    def notify(message: str) -> None:
        click.echo(message, err=True)

    conversation = chat.Conversation(
        llm, fmt, opts.sampling(grammar_text), opts.n_predict, opts.system, notify, opts.stop
    )
    conversation.vision = seen
    chat.run(conversation)


def baked_template() -> Optional[dict[str, str]]:
    """The chat template `pack build --chat-template` put in this file's manifest, if any."""
    found = archive()
    if found is None:
        return None
    from runtime.file.archive import ArchiveError, read_manifest

    try:
        value = read_manifest(found).defaults.get("chat_template")
    except ArchiveError:
        return None
    return dict(value) if isinstance(value, dict) else None


def bind(opts: Options) -> Any:
    from runtime.serve import listen

    return listen.bind(opts.host, opts.port)


def serve(
    load_model: Any,
    source: Any,
    opts: Options,
    grammar_text: Optional[str],
    sock: Any,
    projector: Any = None,
) -> None:
    """Serve on `sock`, answering 503 while `load_model()` loads the model (and `projector`,
    the vision projector, beside it)."""
    import time

    from runtime.chat import templates
    from runtime.engine.media import vision
    from runtime.serve import app as server
    from runtime.serve import media, metrics, service
    from runtime.serve import state as served

    loaded: list[Any] = []

    def load() -> Any:
        llm = load_model()
        loaded.append(llm)
        devices = [] if opts.no_mmproj_offload else llm.gpu_devices
        seen = vision.open_for(llm, projector, devices, opts.threads or settings.default_threads())
        if seen is not None:
            loaded.insert(0, seen)  # closed before the model
        fmt = templates.choose(llm, opts.chat_template, baked_template())
        click.echo(fmt.notice(), err=True)
        work = service.Service(llm, slots=opts.parallel, drafters=drafters(llm, opts))
        return server.ServerState(
            service=work,
            model=llm,
            fmt=fmt,
            model_id=served.model_id(opts.alias, source),
            reasoning_format=opts.reasoning_format,
            metrics=metrics.Metrics(work, seen),
            defaults=opts.sampling(grammar_text),
            n_predict=opts.n_predict,
            stops=opts.stop,
            api_key=opts.api_key,
            created=int(time.time()),
            cors_origins=opts.cors_origin,
            vision=seen,
            media=media.Policy(opts.allow_remote_media, opts.media_path),
        )

    if opts.host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(
            f"warning: listening on {opts.host}: anyone who can reach this address can use the model"
            + ("" if opts.api_key else " (no --api-key is set)"),
            err=True,
        )
    try:
        server.serve(load, sock, opts.host, open_browser=not opts.nobrowser)
    finally:
        for each in loaded:  # the projector, then the model
            each.close()


def clean_cache() -> None:
    from runtime.file import cleanup
    from runtime.file.boot import cache_dir

    removed, freed, left = cleanup.clean()
    click.echo(
        f"removed {removed} old entries ({freed / 1e6:.1f} MB) from {cache_dir()}; "
        f"it now holds {left / 1e6:.1f} MB",
        err=True,
    )


def rpc_worker(opts: Options) -> None:
    from runtime.rpc.worker import worker_main

    endpoint = opts.rpc_worker or ""
    if ":" not in endpoint:  # a port alone: loopback, since the protocol has no authentication
        endpoint = f"127.0.0.1:{endpoint}"
    worker_main([endpoint, "--threads", str(opts.threads or settings.default_threads())])


def local_gpus(opts: Options, choice: Any) -> list[Any]:
    """This machine's GPU devices that join the RPC workers (self-tested, chosen as without
    --rpc by --gpu, --device, --main-gpu, --split-mode); none with --gpu none or -ngl 0."""
    from runtime.engine.devices import gpu, gpu_selftest
    from runtime.engine.devices.variants import extracted

    want = gpu.WORDS[opts.gpu.lower()]
    if want == "none" or gpu.parse_ngl(opts.n_gpu_layers) == 0:
        return []
    found, why = gpu.discover(want, gpu_selftest.verdicts(choice.path))
    chosen = gpu.choose(found, opts.gpu_device, opts.main_gpu, opts.split_mode)
    if not chosen and want in ("vulkan", "cuda"):
        backend = "Vulkan" if want == "vulkan" else "CUDA"
        raise gpu.GpuError(f"--gpu {want}: no usable {backend} device ({why.get(backend, 'none')})")
    for backend in {d.backend for d in chosen}:
        extracted(gpu.carried()[backend])  # used now: the next start loads it from disk
    return chosen


def offload(opts: Options, source: Any, endpoints: list[tuple[str, int]], choice: Any) -> Any:
    """How the model is split over the RPC workers and this machine's GPUs (and its CPU, with
    --rpc-local); one line says over which."""
    from runtime.engine.devices import gpu
    from runtime.rpc import client as rpc
    from runtime.rpc.endpoints import RpcError

    workers = rpc.add_servers(endpoints)
    here = local_gpus(opts, choice)
    devices = workers + [d.handle for d in here]
    weights = None
    if opts.tensor_split:
        try:
            weights = [float(w) for w in opts.tensor_split.split(",")]
        except ValueError:
            raise RpcError(
                f"--tensor-split {opts.tensor_split}: give numbers separated by commas"
            ) from None
    offload = rpc.plan_offload(
        devices,
        weights,
        include_local=opts.rpc_local,
        n_layer=rpc.layer_count(source.path, source.offset),
    )
    from runtime.engine.devices.gpu import parse_ngl

    offload.local_backends = tuple(d.backend for d in here)
    ngl = parse_ngl(opts.n_gpu_layers)
    if ngl and not opts.rpc_local:
        offload.n_gpu_layers = ngl  # llama.cpp's meaning: layers sent away
    count = f"{len(endpoints)} RPC worker{'s' if len(endpoints) > 1 else ''}"
    click.echo(
        f"splitting the model over {count} and {gpu.describe(here)}"
        if here
        else f"splitting the model over {count} (no local GPU: {_why_no_gpu(opts)})",
        err=True,
    )
    return offload


def _why_no_gpu(opts: Options) -> str:
    from runtime.engine.devices import gpu

    if gpu.WORDS[opts.gpu.lower()] == "none":
        return "--gpu none"
    if gpu.parse_ngl(opts.n_gpu_layers) == 0:
        return "-ngl 0"
    return "none found"


def gpu_plan(opts: Options, source: Any, choice: Any) -> Any:
    """Where the layers go on this machine's GPUs (runtime.engine.devices.gpu), self-tests first."""
    from runtime.engine.devices import gpu, gpu_selftest

    ngl = gpu.parse_ngl(opts.n_gpu_layers)
    want = gpu.WORDS[opts.gpu.lower()]
    verdicts = {} if want == "none" or ngl == 0 else gpu_selftest.verdicts(choice.path)
    return gpu.plan(
        want,
        opts.gpu_device,
        opts.main_gpu,
        opts.split_mode,
        opts.tensor_split,
        ngl,
        source,
        opts.ctx_size,
        settings.N_BATCH,
        verdicts,
    )


def _loading(opts: Options) -> dict[str, Any]:
    """What the model and its draft model are both loaded with."""
    return {
        "n_batch": settings.N_BATCH,
        "n_threads": opts.threads or settings.default_threads(),
        "use_mmap": not opts.no_mmap,
        "n_seq_max": opts.parallel if opts.server else 1,
    }


def open_model(opts: Options, source: Any, rpc_offload: Any, choice: Any) -> Any:
    """The model, loaded with its layers on the GPU (fewer, and said so, if they do not fit)
    or split over RPC workers; one line on stderr says where it runs."""
    from runtime.engine.decoding import model as engine
    from runtime.engine.devices import gpu

    plan = None if rpc_offload is not None else gpu_plan(opts, source, choice)
    backends = [d.backend for d in plan.devices] if plan else rpc_offload.local_backends
    flash_attn = gpu.flash_attn(opts.flash_attn, backends)
    retried = False
    while True:
        try:
            llm = engine.Model(
                source,
                n_ctx=opts.ctx_size,
                use_mlock=opts.mlock,
                offload=rpc_offload if plan is None else plan.offload,
                flash_attn=flash_attn,
                **_loading(opts),
            )
            break
        except engine.EngineError:
            if plan is None or plan.layers == 0 or not gpu.out_of_memory():
                raise
            fewer = plan.layers * 3 // 4
            click.echo(
                f"the GPU ran out of memory with {plan.layers} layers: retrying with {fewer}",
                err=True,
            )
            plan.layers = plan.offload.n_gpu_layers = fewer
            retried = True
    llm.gpu_devices = plan.devices if plan is not None else []  # the projector's too
    if plan is not None and (plan.devices or plan.line):
        # Said once the model has loaded, so that a file llama.cpp refuses gets one line.
        click.echo(gpu.offloaded_line(plan, retried), err=True)
    try:
        llm.draft = open_draft(opts, source, llm, rpc_offload, choice)
    except BaseException:
        llm.close()
        raise
    return llm
