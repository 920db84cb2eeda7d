"""The chat page in a real headless Chromium (Debian's), driven by Playwright."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Server

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def page_server(smollm2_pyz: Path) -> Iterator[Server]:
    srv = Server(smollm2_pyz, "-c", "2048", "--temp", "0")
    yield srv
    srv.stop()


@pytest.fixture()
def page(page_server: Server, tmp_path: Path) -> Iterator[Any]:
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (.ci/run installs it)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        context = browser.new_context(viewport={"width": 390, "height": 800})  # a phone
        tab = context.new_page()
        tab.goto(page_server.url + "/")
        yield tab
        browser.close()


def test_page_shows_model_streams_answer_stops_and_starts_over(page: Any, tmp_path: Path) -> None:
    page.wait_for_function(
        "document.getElementById('model').textContent.includes('SmolLM2-135M-Instruct')"
    )
    page.fill("#input", "What is 2 + 2?")
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.assistant:not(.pending)", timeout=120_000)
    answer = page.inner_text(".msg.assistant")
    assert "4" in answer
    assert page.inner_text(".msg.user") == "What is 2 + 2?"

    page.fill("#input", "Write a very long story about a dragon who learns to cook.")
    page.click("#send")
    # Streaming: the reply grows while the request is still open.
    page.wait_for_function(
        "document.querySelectorAll('.msg.assistant')[1]?.textContent.split(' ').length > 5",
        timeout=120_000,
    )
    early = page.inner_text(".msg.assistant >> nth=1")
    page.wait_for_function(
        f"document.querySelectorAll('.msg.assistant')[1].textContent.length > {len(early) + 20}",
        timeout=120_000,
    )
    assert page.is_enabled("#stop")
    page.click("#stop")
    page.wait_for_selector(".msg.note", timeout=30_000)
    assert page.inner_text(".msg.note") == "stopped"
    assert page.is_enabled("#send") and not page.is_enabled("#stop")
    stopped_at = page.inner_text(".msg.assistant >> nth=1")
    page.wait_for_timeout(1500)
    assert page.inner_text(".msg.assistant >> nth=1") == stopped_at  # nothing more arrives

    page.screenshot(path=str(tmp_path / "chat.png"))
    page.click("#new")
    assert page.locator(".msg").count() == 0
    page.fill("#input", "What is the capital of France?")
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.assistant:not(.pending)", timeout=120_000)
    assert "Paris" in page.inner_text(".msg.assistant")
    # The page fits a phone: nothing wider than the viewport.
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390


def test_markdown_rendered_as_it_streams_and_model_html_escaped(page: Any) -> None:
    page.wait_for_function(
        "document.getElementById('model').textContent.includes('SmolLM2-135M-Instruct')"
    )
    page.fill("#input", "Write a Python function that adds two numbers.")
    page.press("#input", "Enter")
    # A code block while the reply still streams, and one once it is done.
    page.wait_for_selector(".msg.assistant.pending pre code", timeout=120_000)
    page.wait_for_selector(".msg.assistant:not(.pending)", timeout=180_000)
    blocks = page.locator(".msg.assistant pre")
    assert blocks.count() >= 1
    code = blocks.first.locator("code").inner_text()
    assert "def " in code and "return" in code
    assert "```" not in page.inner_text(".msg.assistant")  # the fences became the block
    assert blocks.first.locator("button.copy").inner_text() == "Copy"
    assert page.locator(".msg.assistant p").count() >= 1  # prose around it: paragraphs

    # The page's own renderer on text a model could write: its HTML stays text.
    html = (
        "Hi <img src=x onerror=\"document.title='owned'\"> <b>bold</b>\n\n"
        "<script>document.title='owned'</script>\n\n"
        "- one\n- two\n\n[click](javascript:alert(1)) **strong**"
    )
    page.evaluate(
        "(text) => { const d = document.createElement('div'); d.id = 'probe';"
        " document.body.appendChild(d); render(d, text); }",
        html,
    )
    probe = page.locator("#probe")
    assert probe.locator("img, b, script, a").count() == 0
    assert probe.locator("li").count() == 2 and probe.locator("strong").count() == 1
    text = probe.inner_text()
    assert "<b>bold</b>" in text and "<img src=x" in text
    assert page.title() != "owned"
