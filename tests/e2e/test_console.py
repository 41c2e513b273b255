"""The web console in a real headless Chromium (Debian's, driven by Playwright) against the server
on the tiny model, at a desktop width (1280 px) and a phone's (375 px): what a user sees after
each action, and never a page that scrolls sideways. Also /docs with the network cut.
Screenshots land in tests/e2e/screenshots/."""

from __future__ import annotations

import csv
import io
import re
import shutil
from pathlib import Path

import pytest

from ..helpers import noise_image, solid_image

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parent / "screenshots"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DESKTOP, PHONE = 1280, 375

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"needs Debian's chromium at {CHROMIUM} "
                       "(apt-get install chromium); CI installs it"),
]

TITLES = ["vintage wash blue jeans coat", "organic green tea", "denim jacket, women", "running shoes", "grey sofa"]


@pytest.fixture
async def browser(server, tmp_path):
    """open(width) -> a page of the console at that viewport width."""
    from playwright.async_api import async_playwright

    SHOTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        contexts = []

        async def open_page(width: int, path: str = "/"):
            context = await pw.chromium.launch_persistent_context(
                str(tmp_path / f"profile-{len(contexts)}"), executable_path=CHROMIUM, headless=True, args=FLAGS,
                accept_downloads=True, viewport={"width": width, "height": 900},
            )
            contexts.append(context)
            page = context.pages[0] if context.pages else await context.new_page()
            if path == "/":
                await page.goto(f"http://127.0.0.1:{server.http_port}/")
                await page.wait_for_selector("#random-notice:not([hidden])")
            return page

        yield open_page
        for context in contexts:
            await context.close()


async def no_sideways_scroll(page) -> None:
    widths = await page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert widths[0] <= widths[1], f"the page scrolls sideways: {widths[0]} px content in {widths[1]} px"


async def visible(page, selector: str) -> bool:
    return await page.is_visible(selector)


async def test_console_shows_the_random_weight_notice_and_the_model(browser):
    page = await browser(DESKTOP)
    assert "random-weight checkpoint" in await page.inner_text("#random-notice")
    assert "tiny-model" in await page.inner_text("#model-line")
    assert "image/gif" in await page.get_attribute("#d-image", "accept")
    assert "image/gif" in await page.get_attribute("#b-images", "accept")


@pytest.mark.parametrize("width", [DESKTOP, PHONE])
async def test_single_analysis_shows_score_highlights_and_a_heat_map_with_legend_values_and_opacity(
        browser, client, width):
    page = await browser(width)
    photo = noise_image(64, 64, seed=5)
    await page.fill("#q-text", "retro denim jacket")
    await page.set_input_files("#d-image", files=[{"name": "jacket.png", "mimeType": "image/png", "buffer": photo}])
    await page.fill("#d-text", "vintage wash blue jeans coat")
    await page.wait_for_selector("#d-image-clear:not([hidden])")
    await page.click("#analyze")
    await page.wait_for_selector("#single-result:not([hidden])")
    await page.wait_for_selector("#x-document-image canvas")
    score = await page.inner_text("#single-score")
    assert re.fullmatch(r"\d\.\d{3}", score)
    band = await page.inner_text("#single-band")
    assert band in ("strong", "medium", "weak")
    # The same pair over gRPC scores and explains the same (image first, as the console sends it).
    from lychee_grpc.client import image, text
    from lychee_grpc.proto import lychee_pb2 as pb

    pair = pb.Document(parts=[image(photo), text("vintage wash blue jeans coat")])
    rpc = await client.rerank("retro denim jacket", [pair])
    assert score == f"{rpc.results[0].score:.3f}"
    explained = await client.explain("retro denim jacket", pair)
    words = [f for f in explained.fragments if f.text]
    marks = await page.query_selector_all("#x-document-text mark")
    assert [(await m.inner_text()).strip() for m in marks] == [f.text.strip() for f in words]
    for mark, fragment in zip(marks, words):  # raised: green, lowered: red; the value on hover
        style = await mark.get_attribute("style") or ""
        assert ("22, 163, 74" if fragment.attribution >= 0 else "220, 38, 38") in style
        assert (await mark.get_attribute("title")).startswith(f"{'+' if fragment.attribution >= 0 else '−'}"
                                                              f"{abs(fragment.attribution):.3f}")
    # The heat map sits beside the original, with a legend of its scale.
    assert await visible(page, "#x-document-image img") and await visible(page, "#x-document-image canvas")
    cells = [f for f in explained.fragments if f.width]
    scale = max(abs(f.attribution) for f in explained.fragments)
    assert await page.inner_text("#legend-high") == f"+{scale:.3f}"
    assert await page.inner_text("#legend-low") == f"−{scale:.3f}"
    # Pointing at a cell gives its value.
    canvas = await page.query_selector("#x-document-image canvas")
    await canvas.scroll_into_view_if_needed()
    box = await canvas.bounding_box()
    first = min(cells, key=lambda f: (f.y, f.x))
    await canvas.hover(position={"x": (first.x + first.width / 2) * box["width"] / 64,
                                 "y": (first.y + first.height / 2) * box["height"] / 64})
    shown = await page.inner_text("#cell-value")
    assert f"({first.x}, {first.y})" in shown and f"{abs(first.attribution):.3f}" in shown
    # The opacity slider changes what the heat map shows.
    pixel = "Array.from(document.querySelector('#x-document-image canvas').getContext('2d')" \
            ".getImageData(8, 8, 1, 1).data)"
    before = await page.evaluate(pixel)
    await page.fill("#x-opacity", "0")
    after = await page.evaluate(pixel)
    assert after != before and after[0] == after[1] == after[2]  # no heat left: the grey picture
    await page.fill("#x-opacity", "70")
    assert await page.evaluate(pixel) == before
    await no_sideways_scroll(page)
    await page.screenshot(path=str(SHOTS / ("console-single.png" if width == DESKTOP else "console-single-375.png")),
                          full_page=True)


@pytest.mark.parametrize("width", [DESKTOP, PHONE])
async def test_batch_rerank_shows_line_numbers_movement_and_a_full_precision_csv(browser, tmp_path, width):
    page = await browser(width)
    await page.click("#tab-batch")
    await page.fill("#b-query", "retro denim jacket")
    # Blank lines are dropped, and line numbers still name the lines typed.
    typed = ["", TITLES[0], TITLES[1], "", TITLES[2], TITLES[3], TITLES[4]]
    await page.fill("#b-docs", "\n".join(typed))
    assert "(5 of at most 150)" in await page.inner_text("#b-count")
    async with page.expect_response("**/v1/rerank") as answered:
        await page.click("#rerank")
    results = (await (await answered.value).json())["results"]
    await page.wait_for_selector("#b-table:not([hidden])")
    rows = await page.query_selector_all("#b-table tbody tr")
    cells = [[await td.inner_text() for td in await row.query_selector_all("td")] for row in rows]
    assert [c[0] for c in cells] == [str(k) for k in range(1, 6)]
    assert [c[3] for c in cells] == [TITLES[r["index"]] for r in results]
    assert [int(c[1]) for c in cells] == [typed.index(TITLES[r["index"]]) + 1 for r in results]
    for k, (c, r) in enumerate(zip(cells, results), 1):
        moved = r["index"] + 1 - k
        assert c[2] == (f"▲{moved}" if moved > 0 else f"▼{-moved}" if moved < 0 else "–")
        assert c[4] == f"{r['relevance_score']:.3f}"
    async with page.expect_download() as info:
        await page.click("#b-csv")
    download = await info.value
    assert download.suggested_filename == "rerank.csv"
    target = tmp_path / "rerank.csv"
    await download.save_as(str(target))
    table = list(csv.DictReader(io.StringIO(target.read_text())))
    assert {r["query"] for r in table} == {"retro denim jacket"}
    assert [r["document"] for r in table] == [TITLES[r["index"]] for r in results]  # "denim jacket, women" quoted
    assert [float(r["score"]) for r in table] == [r["relevance_score"] for r in results]  # every digit
    assert [float(r["logit"]) for r in table] == [r["logit"] for r in results]
    assert [r["line"] for r in table] == [c[1] for c in cells]
    await no_sideways_scroll(page)
    await page.screenshot(path=str(SHOTS / ("console-batch.png" if width == DESKTOP else "console-batch-375.png")),
                          full_page=True)


@pytest.mark.parametrize("width", [DESKTOP, PHONE])
async def test_batch_takes_image_documents_and_each_row_explains_itself(browser, client, width):
    page = await browser(width)
    await page.click("#tab-batch")
    await page.fill("#b-query", "red sneakers")
    await page.fill("#b-docs", "canvas sneaker, red")
    shoe, sofa = solid_image(48, 48, (200, 30, 30)), solid_image(40, 56, (90, 90, 90), fmt="GIF")
    await page.set_input_files("#b-images", files=[
        {"name": "shoe.png", "mimeType": "image/png", "buffer": shoe},
        {"name": "sofa.gif", "mimeType": "image/gif", "buffer": sofa}])
    await page.wait_for_function("document.querySelector('#b-docs').value.includes('sofa.gif')")
    # Each file became a line naming it; text after the name is the document's text.
    await page.fill("#b-docs", "canvas sneaker, red\nshoe.png red canvas sneaker\nsofa.gif")
    assert "(3 of at most 150)" in await page.inner_text("#b-count")
    await page.click("#rerank")
    await page.wait_for_selector("#b-table:not([hidden])")
    from lychee_grpc.client import image, text
    from lychee_grpc.proto import lychee_pb2 as pb

    rpc = await client.rerank("red sneakers", [pb.Document(parts=[text("canvas sneaker, red")]),
                                               pb.Document(parts=[image(shoe), text("red canvas sneaker")]),
                                               pb.Document(parts=[image(sofa)])])
    rows = await page.query_selector_all("#b-table tbody tr")
    shown = [[await td.inner_text() for td in await row.query_selector_all("td")] for row in rows]
    assert [int(c[1]) for c in shown] == [r.index + 1 for r in rpc.results]  # line numbers
    assert [c[4] for c in shown] == [f"{r.score:.3f}" for r in rpc.results]
    assert len(await page.query_selector_all("#b-table tbody img")) == 2
    # "why" opens the single analysis of that pair.
    shoe_row = next(k for k, c in enumerate(shown) if c[1] == "2")
    await (await rows[shoe_row].query_selector("button.why")).click()
    await page.wait_for_selector("#single-result:not([hidden])")
    assert await visible(page, "#page-single") and not await visible(page, "#page-batch")
    assert await page.input_value("#q-text") == "red sneakers"
    assert await page.input_value("#d-text") == "red canvas sneaker"
    assert await page.inner_text("#single-score") == shown[shoe_row][4]
    await page.wait_for_selector("#x-document-image canvas")
    await no_sideways_scroll(page)


async def test_settings_send_the_ecommerce_instruction_top_n_and_color_by_own_bands(browser):
    page = await browser(DESKTOP)
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


@pytest.mark.parametrize("width", [DESKTOP, PHONE])
async def test_errors_read_clearly_replace_old_results_and_stay_with_their_tab(browser, width):
    page = await browser(width)
    await page.click("#tab-batch")
    await page.click("#rerank")
    assert "Type a query" in await page.inner_text("#batch-error")
    await page.fill("#b-query", "q")
    await page.fill("#b-docs", "\n".join(TITLES))
    await page.click("#rerank")
    await page.wait_for_selector("#b-table:not([hidden])")
    assert not await visible(page, "#batch-error")
    # A request that fails leaves no older result on show under its error.
    await page.fill("#b-docs", "\n".join(f"title {i}" for i in range(151)))
    await page.click("#rerank")
    assert "at most 150" in await page.inner_text("#batch-error")
    assert not await visible(page, "#b-table") and await page.is_disabled("#b-csv")
    # The error belongs to the batch tab: not shown on another, still there on coming back.
    await page.click("#tab-single")
    assert not await visible(page, "#batch-error") and not await visible(page, "#single-error")
    await page.fill("#q-text", "q")
    await page.set_input_files("#d-image", files=[{"name": "broken.png", "mimeType": "image/png",
                                                   "buffer": noise_image(40, 40)[:60]}])
    await page.wait_for_selector("#d-image-clear:not([hidden])")
    await page.click("#analyze")
    await page.wait_for_selector("#single-error:not([hidden])")
    message = await page.inner_text("#single-error")
    assert "refused" in message and "image" in message and "corrupt" in message and "request id" in message
    assert not await visible(page, "#single-result")
    await page.click("#tab-batch")
    assert "at most 150" in await page.inner_text("#batch-error")
    assert not await visible(page, "#single-error")
    # A server-side refusal in batch names the line, not the list index.
    await page.fill("#b-docs", "fine title\n\nbad.png\n")
    await page.set_input_files("#b-images", files=[{"name": "bad.png", "mimeType": "image/png",
                                                    "buffer": noise_image(40, 40)[:60]}])
    await page.fill("#b-docs", "fine title\n\nbad.png")
    await page.click("#rerank")
    await page.wait_for_selector("#batch-error:not([hidden])")
    assert "line 3" in await page.inner_text("#batch-error")
    await no_sideways_scroll(page)


async def test_api_docs_render_with_the_network_cut(browser, server):
    page = await browser(DESKTOP, path="")
    local = f"http://127.0.0.1:{server.http_port}"
    refused: list[str] = []

    async def only_this_server(route):
        if route.request.url.startswith(local):
            await route.continue_()
        else:
            refused.append(route.request.url)
            await route.abort()

    await page.context.route("**/*", only_this_server)
    await page.goto(f"{local}/docs")
    await page.wait_for_selector(".opblock-summary-path")
    shown = [await e.inner_text() for e in await page.query_selector_all(".opblock-summary-path")]
    assert {"/v1/rerank", "/v2/rerank", "/rerank", "/v1/models"} <= set(shown)
    assert refused == []
