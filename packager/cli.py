"""`pack`: build, inspect and verify llamapyz files."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any, Optional

import click

from packager.errors import PackError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llamapyz", prog_name="pack")
def cli() -> None:
    """Build, inspect and verify single-file language models."""
    # A write past RLIMIT_FSIZE must fail with EFBIG, not kill the process mid-file.
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


@cli.command()
@click.argument("model", required=False)
@click.argument("run_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- ARGS...]")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Where to write the executable. Default: MODEL with a .pyz suffix.",
)
@click.option("--no-weights", is_flag=True, help="Build the bare runtime, which then needs -m.")
@click.option(
    "--chat-template",
    help="Bake a chat format into the file: a llama.cpp template name or a .jinja file.",
)
@click.option(
    "--python",
    "pythons",
    default=",".join(("3.9", "3.10", "3.11", "3.12", "3.13")),
    show_default=True,
    help="CPython versions the file runs on (each adds its compiled modules).",
)
@click.option(
    "--args-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Default arguments for the file, in llamafile's .args format.",
)
@click.option(
    "--gpu",
    type=click.Choice(["none", "vulkan", "cuda"]),
    help="GPU backends to carry: vulkan (the default, when built), cuda (adds CUDA), none.",
)
@click.option(
    "--arch",
    type=click.Choice(["all", "x86_64", "aarch64"]),
    help="Architectures to carry: all (the default: every one built here), x86_64, aarch64.",
)
@click.option(
    "--draft",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A draft model for speculative decoding, carried in the file (same vocabulary).",
)
@click.option(
    "--mmproj",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The model's vision projector (an mmproj GGUF), carried in the file.",
)
def build(
    model: Optional[str],
    run_args: tuple[str, ...],
    output: Optional[Path],
    no_weights: bool,
    chat_template: Optional[str],
    args_file: Optional[Path],
    pythons: str,
    gpu: Optional[str],
    arch: Optional[str],
    draft: Optional[Path],
    mmproj: Optional[Path],
) -> None:
    """Bundle MODEL (a .gguf, or ollama:NAME[:TAG]) and the runtime into one executable file.

    Arguments after `--` become the file's defaults: `pack build m.gguf -- --temp 0.2 -c 4096`.
    """
    from packager.build import build_pyz
    from packager.sources import from_spec

    if no_weights and model is not None:
        raise click.UsageError("give either MODEL or --no-weights, not both")
    if not no_weights and model is None:
        raise click.UsageError("missing MODEL (a .gguf file), or --no-weights for the bare runtime")
    if no_weights and (draft or mmproj):
        raise click.UsageError(
            "--draft and --mmproj go with a MODEL: the bare runtime (--no-weights) has no "
            "model to check them against"
        )
    from packager import arches
    from packager.abis import parse_versions

    try:
        versions = parse_versions(pythons)
        machines = arches.parse(arch) if arch else None
        source = from_spec(model) if model is not None else None
        args = _default_args(source.args if source else [], args_file, list(run_args))
    except PackError as exc:
        raise click.ClickException(str(exc)) from None
    if output is None:
        output = source.default_output if source and source.default_output else Path("llamapyz.pyz")
    defaults = {}
    if chat_template:
        from runtime.chat import templates

        try:
            defaults["chat_template"] = templates.baked(chat_template)
        except templates.TemplateError as exc:
            raise click.ClickException(str(exc)) from None
    for note in source.notes if source else []:
        click.echo(note, err=True)
    try:
        result = build_pyz(
            source.path if source else None,
            output,
            args=args,
            defaults=defaults,
            filename=source.filename if source else None,
            model_extra=source.model_extra if source else None,
            pythons=versions,
            expected=source.expected if source else None,
            gpu=gpu or "default",
            draft=draft,
            projector=mmproj or (source.projector if source else None),
            machines=machines,
        )
    except PackError as exc:
        raise click.ClickException(str(exc)) from None
    _say_arches(result.manifest.build, arch)
    if gpu is None and not result.manifest.build.get("gpu_backends"):
        click.echo(
            "note: no GPU backend is built here (make install builds Vulkan's): "
            "the file runs on the CPU only",
            err=True,
        )
    click.echo(f"wrote {result.path} ({result.size_human})", err=True)


def _say_arches(build: dict[str, Any], arch: Optional[str]) -> None:
    """One line when the file goes without an architecture: what it leaves out, and why."""
    from packager import arches
    from runtime.file.boot import MACHINES

    carried = build.get("arches", {})
    if arch is None and arches.host() in carried and len(carried) < len(arches.ARCHES):
        missing = [MACHINES[m] for m in arches.ARCHES if m not in carried]
        click.echo(
            f"note: {', '.join(missing)} is not built here (make install cross-builds it): "
            f"the file runs on {MACHINES[arches.host()]} only",
            err=True,
        )


def _count(n: object) -> str:
    if not isinstance(n, int):
        return "?"
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _default_args(implied: list[str], args_file: Optional[Path], extra: list[str]) -> list[str]:
    """The file's default arguments: the model's own, an .args file's, then those after `--`;
    checked against the runtime's flags now, so that a typo fails the build, not every run."""
    from runtime.cli import main
    from runtime.sources import argsfile

    args = list(implied)
    if args_file is not None:
        try:
            args += argsfile.parse_args_text(args_file.read_text(encoding="utf-8"), str(args_file))
        except argsfile.ArgsError as exc:
            raise PackError(str(exc)) from None
    args += extra
    try:
        main.make_context("pack", [a for a in args if a != argsfile.PLACEHOLDER])
    except click.ClickException as exc:
        raise PackError(
            f"the default arguments {' '.join(args)!r} are not valid: {exc.format_message()}"
        ) from None
    return args


@cli.command("list-ollama")
def list_ollama() -> None:
    """List the models in the local Ollama store (run them with -m ollama:NAME)."""
    from datetime import datetime

    from packager.build import human
    from runtime.sources import ollama

    try:
        models = ollama.list_models()
    except ollama.OllamaError as exc:
        raise click.ClickException(str(exc)) from None
    if not models:
        click.echo("the Ollama store holds no models", err=True)
        return
    width = max(len(m.name) for m in models)
    click.echo(f"{'NAME':<{width}}  {'SIZE':>9}  MODIFIED")
    for m in models:
        when = datetime.fromtimestamp(m.modified).strftime("%Y-%m-%d %H:%M")
        click.echo(f"{m.name:<{width}}  {human(m.size):>9}  {when}")


def _manifest(pyz: Path) -> object:
    from runtime.file.archive import ArchiveError, read_manifest

    try:
        return read_manifest(pyz)
    except ArchiveError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command()
@click.argument("pyz", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def inspect(pyz: Path, as_json: bool) -> None:
    """Show what a .pyz holds, without running it."""
    from packager.build import human
    from runtime.file.archive import Manifest

    manifest = _manifest(pyz)
    assert isinstance(manifest, Manifest)
    if as_json:
        click.echo(json.dumps(manifest.to_json(), indent=2))
        return
    m, w, b = manifest.model, manifest.weights, manifest.build
    if w is None:
        click.echo("weights:        none (bare runtime: run it with -m MODEL)")
    else:
        click.echo(f"weights:        {w.filename}, {human(w.size)} at offset {w.offset}")
        click.echo(f"sha256:         {w.sha256}")
        click.echo(
            f"model:          {m.get('name')} ({m.get('architecture')}, "
            f"{_count(m.get('parameters'))} parameters, {m.get('quantization')})"
        )
        click.echo(f"context length: {m.get('context_length')}")
        click.echo(f"chat template:  {'yes' if m.get('chat_template') else 'no'}")
        click.echo(f"license:        {m.get('license') or 'not stated'}")
    for g in manifest.ggufs[1:]:
        _show_extra(g)
    if manifest.args:
        click.echo(f"default args:   {' '.join(manifest.args)}")
    baked = manifest.defaults.get("chat_template")
    if isinstance(baked, dict):
        click.echo(f"chat format:    {baked.get('name')} (set at build; overrides the model's)")
    pkgs = ", ".join(f"{k} {v}" for k, v in sorted(b.get("packages", {}).items()))
    click.echo(f"runtime:        {pkgs}")
    click.echo(
        f"built:          {b.get('built_at')} with Python {b.get('python')} on {b.get('platform')}"
    )
    _show_arches(b)


def _show_arches(b: dict[str, Any]) -> None:
    """`pack inspect`'s CPU variant, GPU backend and runs-on lines, per architecture."""
    from runtime.file.archive import describe
    from runtime.file.boot import MACHINES

    carried = b.get("arches") or {
        "x86_64": {
            "cpu_variants": b.get("cpu_variants", []),
            "gpu_backends": b.get("gpu_backends", []),
        }
    }
    several = len(carried) > 1
    for m, facts in sorted(carried.items(), reverse=True):
        label = f"{MACHINES.get(m, m)}: " if several else ""
        click.echo(f"cpu variants:   {label}{', '.join(facts.get('cpu_variants', []))}")
    gpus = {m: facts.get("gpu_backends", []) for m, facts in carried.items()}
    shown = sorted({g for found in gpus.values() for g in found})
    without = [MACHINES.get(m, m) for m, found in sorted(gpus.items(), reverse=True) if not found]
    line = ", ".join(shown) or "none"
    if shown and without:
        line += f" (not on {' and '.join(without)}: the CPU only there)"
    click.echo(f"gpu backends:   {line}")
    pythons = ", ".join(b.get("pythons", []))
    click.echo(f"runs on:        CPython {pythons} ({describe(list(carried))})")


def _show_extra(g: Any) -> None:
    """A draft model's or projector's lines in `pack inspect`."""
    from packager.build import human

    f = g.facts
    click.echo(f"{g.role + ':':<16}{g.filename}, {human(g.size)} at offset {g.offset}")
    click.echo(f"  sha256:       {g.sha256}")
    if g.role == "draft":
        click.echo(
            f"  model:        {f.get('name')} ({f.get('architecture')}, "
            f"{_count(f.get('parameters'))} parameters, {f.get('quantization')})"
        )
    elif g.role == "projector":
        size = f.get("image_size")
        width = f.get("output_width")
        details = [f"images {size} px" if size else "", f"output width {width}" if width else ""]
        shown = ", ".join(d for d in details if d)
        click.echo(f"  type:         {f.get('projector_type')}" + (f" ({shown})" if shown else ""))


@cli.command()
@click.argument("pyz", type=click.Path(path_type=Path))
def verify(pyz: Path) -> None:
    """Recompute each GGUF's sha256, compare it with the manifest, and check the GGUF."""
    from runtime.file.archive import ArchiveError, Manifest, hash_range
    from runtime.file.gguf_check import GGUFError, check

    manifest = _manifest(pyz)
    assert isinstance(manifest, Manifest)
    if manifest.weights is None:
        click.echo(f"{pyz}: no weights to verify (bare runtime)", err=True)
        return
    said = []  # said once every GGUF passed: a failure is then the one line
    for g in manifest.ggufs:
        try:
            digest = hash_range(pyz, g.offset, g.size)
        except (ArchiveError, OSError) as exc:
            raise click.ClickException(f"{pyz}: {exc}") from None
        if digest != g.sha256:
            verb = "are" if g.role == "model" else "is"
            raise click.ClickException(
                f"{pyz}: {g.what} {verb} damaged (sha256 {digest}, the manifest says {g.sha256})"
            )
        shown = g.filename if g.role == "model" else f"{g.role} {g.filename}"
        try:  # a file built before the check existed may hold a GGUF llama.cpp chokes on
            check(pyz, g.offset, g.size, f"{pyz} (embedded {shown})")
        except GGUFError as exc:
            raise click.ClickException(str(exc)) from None
        what = "weights" if g.role == "model" else g.what.removeprefix("the ")
        said.append(f"{pyz}: {what} ok (sha256 {digest}; the GGUF passes the check)")
    for line in said:
        click.echo(line, err=True)
