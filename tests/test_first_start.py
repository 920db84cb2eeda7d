"""What a first start extracts: the runtime for a one-shot or a chat, one CPU variant; the
server's packages follow on the first --server, and every later start finds them."""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from pathlib import Path

import pytest
from conftest import Server, run_pyz

from runtime.engine.devices import variants

ARGS = ("-p", "ab", "-n", "4", "--temp", "0")


def site_packages(cache: Path) -> Path:
    (site,) = (cache / "runtimes").glob("cp*/*/site-packages")
    return site


def test_a_one_shot_extracts_what_it_runs_and_one_variant(tiny_pyz: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = dict(os.environ, LLAMAPYZ_CACHE=str(cache))
    first = run_pyz(tiny_pyz, *ARGS, env=env)
    assert first.returncode == 0, first.stderr
    site = site_packages(cache)
    assert (site / "runtime").is_dir() and (site / "click").is_dir()
    for server_only in ("fastapi", "pydantic", "pydantic_core", "uvicorn", "starlette"):
        assert not (site / server_only).exists(), server_only

    info = run_pyz(tiny_pyz, "--system-info", env=env)
    lines = info.stdout.splitlines()
    name = next(line for line in lines if line.startswith("chosen: ")).split()[1]
    on_disk = sorted(p.name for p in (site / "bin").glob(f"{variants.PREFIX}*.so"))
    assert on_disk == [f"{variants.PREFIX}{name}.so"]
    shipped = next(line for line in lines if line.startswith("variants shipped:"))
    assert len(shipped.split(",")) > 5, shipped  # all of them, though one is extracted

    # Another variant, asked for by name, is extracted then and gives the same text.
    other = "x64" if name != "x64" else "sse42"
    forced = run_pyz(tiny_pyz, *ARGS, "--cpu-variant", other, env=env)
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout == first.stdout
    assert (site / "bin" / f"{variants.PREFIX}{other}.so").exists()


@pytest.mark.slow
def test_servers_started_together_after_a_one_shot_extract_the_server_packages_once(
    tiny_pyz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("LLAMAPYZ_CACHE", str(cache))
    assert run_pyz(tiny_pyz, *ARGS).returncode == 0
    servers: list[Server] = []

    def start() -> None:
        servers.append(Server(tiny_pyz))

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert len(servers) == 3
        for srv in servers:
            with urllib.request.urlopen(srv.url + "/health", timeout=30) as response:
                assert json.loads(response.read())["status"] == "ok"
    finally:
        errors = [srv.stop() for srv in servers]
    assert not [e for e in errors if "Traceback" in e], errors
    site = site_packages(cache)
    assert (site / "pydantic").is_dir() and (site / ".deferred-extracted").exists()
    assert not list(site.parent.glob(".deferred-*[0-9]"))  # no temporary folder left
    # A later one-shot still runs, and nothing is extracted again.
    again = run_pyz(tiny_pyz, *ARGS)
    assert again.returncode == 0, again.stderr
