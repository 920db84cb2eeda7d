"""The chat page in a real headless Chromium (Debian's), driven by Playwright: SmolLM2 for
answers, and the tiny model packed with the tiny projector for images (attached, pasted,
dropped, resent the next turn) beside it packed without one."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import Server, build_session_pyz, image_bytes, write_tiny_projector

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
NO_VISION = "This model has no vision projector"


@pytest.fixture(scope="module")
def page_server(smollm2_pyz: Path) -> Iterator[Server]:
    srv = Server(smollm2_pyz, "-c", "2048", "--temp", "0")
    yield srv
    srv.stop()


@pytest.fixture()
def browse() -> Iterator[Callable[[Server], Any]]:
    """Opens a server's chat page in a new tab of one Chromium, the width of a phone."""
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (.ci/run installs it)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)

        def open_page(server: Server) -> Any:
            tab = browser.new_context(viewport={"width": 390, "height": 800}).new_page()
            tab.goto(server.url + "/")
            return tab

        yield open_page
        browser.close()


@pytest.fixture()
def page(page_server: Server, browse: Callable[[Server], Any]) -> Any:
    return browse(page_server)


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


# Images: the tiny model with the tiny projector (16 tokens an image), short replies.


@pytest.fixture(scope="module")
def vision_server(
    tmp_path_factory: pytest.TempPathFactory, session_cache: Path, tiny_gguf: Path
) -> Iterator[Server]:
    projector = write_tiny_projector(tmp_path_factory.mktemp("proj") / "proj.gguf")
    pyz = build_session_pyz(
        tmp_path_factory, session_cache, str(tiny_gguf), "--mmproj", str(projector)
    )
    srv = Server(pyz, "-c", "512", "-n", "8")
    yield srv
    print("SERVER STDERR:", srv.stop()[-3000:])


@pytest.fixture()
def vision_page(vision_server: Server, browse: Callable[[Server], Any]) -> Any:
    tab = browse(vision_server)
    tab.wait_for_selector("#attach:not([disabled])")
    return tab


@pytest.fixture(scope="module")
def png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pictures") / "cat.png"
    path.write_bytes(image_bytes("png", 40, 30, seed=3))
    return path


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def counter(server: Server, name: str) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    (line,) = [ln for ln in text.splitlines() if ln.startswith(f"llamapyz_{name}_total ")]
    return float(line.split()[-1])


def answered(page: Any, n: int) -> None:
    """The page's n-th reply (from 1) has finished, without an error."""
    page.wait_for_selector(f".msg.assistant:not(.pending) >> nth={n - 1}", timeout=120_000)
    assert page.locator(".msg.note").count() == 0, page.inner_text("#log")


# A page script that hands the page's message box a picture as a browser does: a File in a
# DataTransfer, on a paste event (or a drop on the form).
HAND_OVER = """([kind, b64]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], "pasted.png", { type: "image/png" }));
  const event = kind === "paste"
    ? new ClipboardEvent("paste", { clipboardData: data, bubbles: true, cancelable: true })
    : new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true });
  document.getElementById(kind === "paste" ? "input" : "form").dispatchEvent(event);
  return event.defaultPrevented;
}"""


def test_attached_image_is_shown_sent_and_encoded(
    vision_page: Any, vision_server: Server, png: Path
) -> None:
    page = vision_page
    encoded = counter(vision_server, "images_encoded")
    page.set_input_files("#file", str(png))
    page.wait_for_selector("#attachments .thumb img")
    assert page.get_attribute("#attachments img", "src") == data_url(png.read_bytes())
    page.fill("#input", "What is this?")
    page.press("#input", "Enter")
    answered(page, 1)
    assert page.locator("#attachments img").count() == 0  # sent: the box is empty again
    shown = page.locator(".msg.user .images img")
    assert shown.count() == 1 and shown.get_attribute("src") == data_url(png.read_bytes())
    assert page.inner_text(".msg.user") == "What is this?"
    assert shown.evaluate("img => img.complete && img.naturalWidth") == 40  # a real picture
    assert counter(vision_server, "images_encoded") == encoded + 1


def test_pasted_and_dropped_images_become_removable_attachments(
    vision_page: Any, png: Path
) -> None:
    page = vision_page
    b64 = base64.b64encode(png.read_bytes()).decode()
    assert page.evaluate(HAND_OVER, ["paste", b64]) is True  # the picture is not pasted as text
    page.wait_for_selector("#attachments .thumb img")
    assert page.get_attribute("#attachments img", "src") == data_url(png.read_bytes())
    assert page.input_value("#input") == ""
    assert page.evaluate(HAND_OVER, ["drop", b64]) is True  # the browser does not leave for it
    page.wait_for_selector("#attachments .thumb >> nth=1")
    page.click("#attachments .thumb button >> nth=0")
    assert page.locator("#attachments .thumb").count() == 1
    page.click("#attachments .thumb button")
    assert page.locator("#attachments .thumb").count() == 0


def test_next_turn_resends_the_image_and_the_server_reuses_it(
    vision_page: Any, vision_server: Server, png: Path
) -> None:
    page = vision_page
    picture = image_bytes("png", 32, 32, seed=11)  # not the other tests' picture
    encoded = counter(vision_server, "images_encoded")
    hits = counter(vision_server, "image_cache_hits")
    b64 = base64.b64encode(picture).decode()
    page.evaluate(HAND_OVER, ["paste", b64])
    page.wait_for_selector("#attachments .thumb img")
    page.fill("#input", "What is this?")
    page.press("#input", "Enter")
    answered(page, 1)
    assert counter(vision_server, "images_encoded") == encoded + 1
    page.fill("#input", "And then?")
    page.press("#input", "Enter")
    answered(page, 2)
    assert page.locator(".msg.user").nth(1).locator("img").count() == 0  # the text only
    history = page.evaluate("messages")
    assert history[0]["content"][0] == {
        "type": "image_url",
        "image_url": {"url": data_url(picture)},
    }
    assert history[2] == {"role": "user", "content": "And then?"}
    assert counter(vision_server, "images_encoded") == encoded + 1  # resent, not encoded again
    assert counter(vision_server, "image_cache_hits") == hits + 1


def test_refused_image_shows_the_servers_reason_and_goes_back_to_the_box(
    vision_page: Any,
) -> None:
    page = vision_page
    page.set_input_files(
        "#file", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"hello there"}]
    )
    page.wait_for_selector("#attachments .thumb img")
    page.fill("#input", "What is this?")
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.note")
    note = page.inner_text(".msg.note")
    assert note.startswith("error: ") and "is not an image that can be read" in note, note
    assert page.locator(".msg.user, .msg.assistant").count() == 0  # the turn is not kept
    assert page.evaluate("messages") == []
    assert page.locator("#attachments .thumb").count() == 1
    assert page.input_value("#input") == "What is this?"


def test_attach_is_disabled_and_says_why_on_a_model_without_a_projector(
    tiny_pyz: Path, browse: Callable[[Server], Any], png: Path
) -> None:
    server = Server(tiny_pyz, "-c", "512", "-n", "8")
    try:
        assert requests.get(f"{server.url}/props", timeout=10).json()["modalities"] == {
            "vision": False,
            "audio": False,
        }
        page = browse(server)
        page.wait_for_function(f"document.getElementById('attach').title.startsWith({NO_VISION!r})")
        assert page.is_disabled("#attach")
        assert "--mmproj" in page.get_attribute("#attach", "title")
        b64 = base64.b64encode(png.read_bytes()).decode()
        page.evaluate(HAND_OVER, ["paste", b64])
        page.wait_for_selector(".msg.note")
        assert page.inner_text(".msg.note") == "error: " + page.get_attribute("#attach", "title")
        assert page.locator("#attachments .thumb").count() == 0
    finally:
        server.stop()
