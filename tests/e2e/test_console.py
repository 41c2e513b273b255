"""The web console in a real headless Chromium (Debian's, driven by Playwright) against the
server on the tiny model: settings, single analysis with an image upload, batch rerank with the
CSV download, errors, the random-weight notice. Screenshots land in tests/e2e/screenshots/."""

from __future__ import annotations

import csv
import io
import re
import shutil
from pathlib import Path

import pytest

from ..helpers import noise_image

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parent / "screenshots"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"needs Debian's chromium at {CHROMIUM} "
                       "(apt-get install chromium); CI installs it"),
]

TITLES = ["vintage wash blue jeans coat", "organic green tea", "denim jacket, women", "running shoes", "grey sofa"]


@pytest.fixture
async def page(server, tmp_path):
    from playwright.async_api import async_playwright

    SHOTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=FLAGS, accept_downloads=True,
            viewport={"width": 1200, "height": 900},
        )
        page = context.pages[0] if context.pages else await context.new_page()
        await page.goto(f"http://127.0.0.1:{server.http_port}/")
        await page.wait_for_selector("#random-notice:not([hidden])")
        yield page
        await context.close()


async def test_console_shows_the_random_weight_notice_and_the_model(page):
    assert "random-weight checkpoint" in await page.inner_text("#random-notice")
    assert "tiny-model" in await page.inner_text("#model-line")


async def test_single_analysis_with_an_image_upload_shows_score_band_highlights_and_heat(page, client):
    await page.fill("#q-text", "retro denim jacket")
    await page.set_input_files("#d-image", files=[{"name": "jacket.png", "mimeType": "image/png",
                                                   "buffer": noise_image(64, 64, seed=5)}])
    await page.fill("#d-text", "vintage wash blue jeans coat")
    await page.wait_for_selector("#d-image-clear:not([hidden])")
    await page.click("#analyze")
    await page.wait_for_selector("#single-result:not([hidden])")
    await page.wait_for_selector("#x-document-image canvas")
    score = await page.inner_text("#single-score")
    assert re.fullmatch(r"\d\.\d{3}", score)
    band = await page.inner_text("#single-band")
    assert band in ("strong", "medium", "weak")
    assert f"band-{band}" in await page.get_attribute("#single-band", "class")
    # The same pair over gRPC scores and explains the same (image first, as the console sends it).
    from lychee_grpc.client import image, text
    from lychee_grpc.proto import lychee_pb2 as pb

    pair = pb.Document(parts=[image(noise_image(64, 64, seed=5)), text("vintage wash blue jeans coat")])
    rpc = await client.rerank("retro denim jacket", [pair])
    assert score == f"{rpc.results[0].score:.3f}"
    explained = await client.explain("retro denim jacket", pair)
    words = [f for f in explained.fragments if f.text]
    marks = await page.query_selector_all("#x-document-text mark")
    assert [(await m.inner_text()).strip() for m in marks] == [f.text.strip() for f in words]
    for mark, fragment in zip(marks, words):  # raised: green, lowered: red
        style = await mark.get_attribute("style") or ""
        if fragment.attribution > 0:
            assert "22, 163, 74" in style
        elif fragment.attribution < 0:
            assert "220, 38, 38" in style
    await page.screenshot(path=str(SHOTS / "console-single.png"), full_page=True)


async def test_batch_rerank_sorts_titles_and_downloads_csv(page, tmp_path):
    await page.click("#tab-batch")
    await page.fill("#b-query", "retro denim jacket")
    await page.fill("#b-docs", "\n".join(TITLES))
    assert "(5 of at most 150)" in await page.inner_text("#b-count")
    await page.click("#rerank")
    await page.wait_for_selector("#b-table:not([hidden])")
    rows = await page.query_selector_all("#b-table tbody tr")
    cells = [[await td.inner_text() for td in await row.query_selector_all("td")] for row in rows]
    assert sorted(c[2] for c in cells) == sorted(TITLES)
    scores = [float(c[3]) for c in cells]
    assert scores == sorted(scores, reverse=True)
    async with page.expect_download() as info:
        await page.click("#b-csv")
    download = await info.value
    assert download.suggested_filename == "rerank.csv"
    target = tmp_path / "rerank.csv"
    await download.save_as(str(target))
    table = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [r["document"] for r in table] == [c[2] for c in cells]  # the comma-holding title survives quoting
    assert [r["score"] for r in table] == [c[3] for c in cells]
    await page.screenshot(path=str(SHOTS / "console-batch.png"), full_page=True)


async def test_settings_send_the_ecommerce_instruction_top_n_and_color_by_own_bands(page):
    await page.click("#tab-settings")
    await page.select_option("#s-preset", "ecommerce")
    assert (await page.input_value("#s-instruction")).startswith("Given an e-commerce search query")
    await page.fill("#s-topn", "2")
    await page.fill("#s-strong", "0")
    await page.fill("#s-medium", "0")
    await page.screenshot(path=str(SHOTS / "console-settings.png"), full_page=True)
    await page.click("#tab-batch")
    await page.fill("#b-query", "retro denim jacket")
    await page.fill("#b-docs", "\n".join(TITLES))
    async with page.expect_request("**/v1/rerank") as sent:
        await page.click("#rerank")
    body = (await sent.value).post_data_json
    assert body["instruction"].startswith("Given an e-commerce search query")
    assert body["top_n"] == 2
    await page.wait_for_selector("#b-table:not([hidden])")
    bands = [await s.inner_text() for s in await page.query_selector_all("#b-table tbody .band")]
    assert bands == ["strong", "strong"]


async def test_errors_read_clearly(page):
    await page.click("#tab-batch")
    await page.click("#rerank")
    assert "Type a query" in await page.inner_text("#error")
    await page.fill("#b-query", "q")
    await page.fill("#b-docs", "\n".join(f"title {i}" for i in range(151)))
    await page.click("#rerank")
    assert "at most 150" in await page.inner_text("#error")
    await page.click("#tab-single")
    await page.fill("#q-text", "q")
    await page.set_input_files("#d-image", files=[{"name": "broken.png", "mimeType": "image/png",
                                                   "buffer": noise_image(40, 40)[:60]}])
    await page.wait_for_selector("#d-image-clear:not([hidden])")
    await page.click("#analyze")
    await page.wait_for_selector("#error:not([hidden])")
    message = await page.inner_text("#error")
    assert "refused" in message and "image" in message and "corrupt" in message and "request id" in message
