"""The search page in a real headless browser: Playwright driving Debian's chromium (no browser
download) against ``artextract serve`` (uvicorn on 127.0.0.1) over a small index. Upload an image,
see its face outlined, click it, get K results, switch the pose mode and see the order change;
upload a broken file and see the error. A screenshot goes to test-artifacts/."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does)", allow_module_level=True)

from test_serve import build_small_index, serve_config  # noqa: E402 - after the skips


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from artextract.serve.app import create_app
    from fixtures.servers import ThreadedServer

    small = build_small_index(tmp_path_factory)
    app = create_app(serve_config(small))
    app.state.engine.warm_up()
    with ThreadedServer(app, host="127.0.0.1", port=0) as url:
        assert url.startswith("http://127.0.0.1:")
        yield url, small


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        except sync_api.Error as exc:
            pytest.skip(f"chromium does not start here: {str(exc).splitlines()[0]}")
        yield b
        b.close()


@pytest.fixture()
def page(browser, server):
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(30_000)
    pg.goto(server[0] + "/")
    sync_api.expect(pg.locator("#index-info")).to_contain_text("index version")
    yield pg
    ctx.close()


def _order(page) -> list[str]:
    return page.eval_on_selector_all("#results .hit", "els => els.map(e => e.dataset.image + '#' + e.dataset.face)")


def test_upload_click_face_results_and_pose_rerank(page, server, tmp_path):
    url, small = server
    page.set_input_files("#upload-input", small["uris"]["astronaut"])
    page.click("#upload-button")
    boxes = page.locator(".face-box")
    sync_api.expect(boxes).to_have_count(1)
    assert boxes.first.get_attribute("aria-label").startswith("face 1")
    box = boxes.first.bounding_box()
    assert box["width"] > 10 and box["height"] > 10
    boxes.first.click()
    hits = page.locator("#results .hit")
    sync_api.expect(hits).to_have_count(4)  # K = the server's default page size
    before = _order(page)
    assert before[0] == "astronaut#0"
    assert all(hits.nth(i).locator("img").get_attribute("alt") for i in range(4))
    sync_api.expect(hits.first).to_contain_text("Eileen Collins")
    sync_api.expect(hits.first.get_by_role("link", name="IIIF image")).to_have_attribute(
        "href", "https://iiif.example.org/astronaut/full/full/0/default.jpg")
    page.select_option("#pose", "rerank")
    page.wait_for_function("before => [...document.querySelectorAll('#results .hit')].map("
                           "e => e.dataset.image + '#' + e.dataset.face).join() !== before", arg=",".join(before))
    after = _order(page)
    assert after != before and after[0] == "astronaut#0" and len(after) == 4
    sync_api.expect(hits.first).to_contain_text("pose")
    shot = tmp_path / "search-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "search-page.png")
    page.click("#next")  # paging
    sync_api.expect(page.locator("#page-info")).to_contain_text("results 5")
    assert not set(_order(page)) & set(after)


def test_broken_upload_shows_error_and_page_keeps_working(page, server, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_bytes(b"These are curator's notes, not an image.\n" * 20)
    page.set_input_files("#upload-input", str(bad))
    page.click("#upload-button")
    err = page.locator("#error")
    sync_api.expect(err).to_be_visible()
    sync_api.expect(err).to_contain_text("upload rejected: not_an_image")
    sync_api.expect(err).to_contain_text("HTTP 415")
    # the server still answers: find a painting by title and open it with the keyboard
    page.fill("#find-input", "double portrait")
    page.press("#find-input", "Enter")
    sync_api.expect(page.locator("#paintings li")).to_have_count(1)
    page.click("#paintings button")
    sync_api.expect(page.locator(".face-box")).to_have_count(2)
    sync_api.expect(err).to_be_hidden()
    page.focus(".face-box >> nth=1")
    page.keyboard.press("Enter")
    sync_api.expect(page.locator("#results .hit")).to_have_count(4)
    assert _order(page)[0] == "double_portrait#1"
