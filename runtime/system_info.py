"""--system-info: the CPU variant, the GPUs and their self-tests, the devices, where the
layers would go, and what speculation a run would use."""

from __future__ import annotations

from typing import Any, Optional

import click

from runtime.engine import settings
from runtime.options import Options


def show(
    choice: object,
    endpoints: Optional[list[tuple[str, int]]] = None,
    opts: Optional[Options] = None,
) -> None:
    from runtime.engine.decoding import model as engine
    from runtime.engine.devices import cpu, cpuinfo, variants
    from runtime.rpc import client as rpc

    assert isinstance(choice, cpu.Choice)
    fingerprint = cpuinfo.cpu_fingerprint().split()
    click.echo(f"machine: {fingerprint[0] if fingerprint else '?'}")
    click.echo("cpu features: " + " ".join(cpuinfo.shown_features()))
    click.echo(f"variants shipped: {', '.join(sorted(variants.available())) or 'none'}")
    for name, why in choice.tried.items():
        click.echo(f"  {name}: {why}")
    click.echo(f"chosen: {choice.variant} ({choice.reason})")
    engine.set_verbose(False)
    engine.start_backend(choice.path)
    if endpoints:
        rpc.add_servers(endpoints)
    if opts is not None:
        gpu_info(opts, choice)
    click.echo("devices:")
    for line in rpc.devices_summary():
        click.echo(f"  {line}")
    if opts is not None:
        click.echo(f"speculation: {speculation_info(opts)}")


def speculation_info(opts: Options) -> str:
    """What speculation a run with these flags uses, and why (for --system-info)."""
    from runtime.engine.decoding.speculate import chosen
    from runtime.file.boot import archive
    from runtime.sources import resolve

    try:
        draft = resolve.draft_for(opts.model_draft, resolve.resolve(opts.model, archive()))
    except resolve.WeightsError as exc:
        return f"unknown ({exc})"
    used = chosen(opts.spec_type, draft is not None)
    if used == "none":
        return "none (--spec-type none)"
    parts = []
    if "ngram" in used:
        parts.append(
            f"n-gram prompt lookup, drafts up to {opts.spec_draft_n_max} tokens, shorter while "
            "several requests generate"
        )
    if "draft" in used:
        assert draft is not None
        parts.append(f"draft model {draft.label}, while one request generates")
    return (
        f"{used} ({'; then '.join(parts)}; as long as the measured cost of a step pays; off for "
        "models whose memory cannot drop draft tokens)"
    )


def gpu_info(opts: Options, choice: Any) -> None:
    """--system-info's GPU part: backends in the file, devices and their self-tests, the choice."""
    from runtime.engine.devices import gpu, gpu_selftest
    from runtime.file.boot import archive
    from runtime.sources import resolve

    carried = gpu.carried()
    click.echo(f"gpu backends: {', '.join(carried) or 'none in this file'}")
    verdicts = gpu_selftest.verdicts(choice.path) if carried else {}
    for backend, tested in verdicts.items():
        for name, why in tested.items():
            device = "" if name == "*" else f" {name}"  # "*": the backend as a whole
            click.echo(f"  {backend}{device}: {'passed the self-test' if why == 'ok' else why}")
    try:
        source = resolve.resolve(opts.model, archive())
    except resolve.WeightsError:
        source = None
    if source is None:
        return
    try:
        plan = gpu.plan(
            gpu.WORDS[opts.gpu.lower()],
            opts.gpu_device,
            opts.main_gpu,
            opts.split_mode,
            opts.tensor_split,
            gpu.parse_ngl(opts.n_gpu_layers),
            source,
            opts.ctx_size,
            settings.N_BATCH,
            verdicts,
        )
    except gpu.GpuError as exc:
        click.echo(f"gpu choice: {exc}")
        return
    for d in plan.devices:
        click.echo(f"  {d.name}: {d.description} ({d.kind}, {d.memory_text()})")
    shown = gpu.offloaded_line(plan).replace("offloaded", "would offload", 1)
    click.echo(f"gpu choice: {shown}")
