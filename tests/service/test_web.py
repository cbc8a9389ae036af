"""The web page in Debian's headless Chromium (driven by Playwright), against the real service
on its embedded cluster: sign in with a key, watch a job go from queued to succeeded as its
tile count rises, see its heatmap and spectrum and a solve's metrics and learning curve; the
page shows no other key's jobs. Screenshots are saved (and copied to ``$NTK_SCREENSHOTS``,
where the README's picture comes from) and inspected."""

from __future__ import annotations

import io
import os
import shutil
import time

import numpy as np
from PIL import Image
from playwright.sync_api import Page, sync_playwright

from ntkcompute.client import Client

from .conftest import make_key

CHROMIUM = "/usr/bin/chromium"
#: Chromium flags for a closed network (no background requests) and a root user.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CONV = {"layers": [{"type": "conv", "filter_shape": [3, 3], "padding": "SAME"},
                   {"type": "relu"}, {"type": "global_avg_pool"}, {"type": "dense"}]}


def _shot(page: Page, path, name: str) -> Image.Image:
    png = page.screenshot(path=str(path / f"{name}.png"), full_page=True)
    if os.environ.get("NTK_SCREENSHOTS"):
        shutil.copy(path / f"{name}.png", os.environ["NTK_SCREENSHOTS"])
    return Image.open(io.BytesIO(png))


def _painted(page: Page, selector: str) -> tuple[int, float]:
    """(distinct colours, standard deviation) of an element's pixels: a drawn canvas has many
    colours and a spread, a blank one has one colour."""
    img = Image.open(io.BytesIO(page.locator(selector).screenshot())).convert("RGB")
    a = np.asarray(img, dtype=float)
    return len({tuple(p) for p in a.reshape(-1, 3)[::7]}), float(a.std())


def test_the_page_watches_a_job_and_shows_its_kernel(service, tmp_path):
    assert os.path.exists(CHROMIUM), "Debian's chromium package is needed (make test installs it)"
    key, other = make_key(service.db, "web"), make_key(service.db, "web-other")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((200, 16, 16, 1)), np.arange(200) % 3
    with Client(service.url, other) as c:  # another key's job, never shown
        hidden = c.kernel(c.upload(np.ones((4, 3))), {"layers": [{"type": "dense"}]}).id
    with sync_playwright() as p, Client(service.url, key) as c:
        train, test = c.upload(x[:160], y[:160]), c.upload(x[160:], y[160:])
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        answer = page.goto(f"{service.url}/")  # redirects to /ui/
        assert answer.url == f"{service.url}/ui/"
        assert "default-src 'self'" in answer.headers["content-security-policy"]
        page.fill("#key", "ntk_0000_bogus")
        page.click("#login-button")
        page.wait_for_selector("#login-error:not(:empty)")
        assert "unknown" in page.inner_text("#login-error") and page.is_hidden("#app")
        page.fill("#key", key)
        page.click("#login-button")
        page.wait_for_selector("#app", state="visible")
        page.wait_for_selector(f'#datasets tr[data-id="{train.id}"]', timeout=10_000)

        job = c.kernel(train, CONV, test=test, tile=8)  # 210 + 100 tiles
        row = f'#jobs tr[data-id="{job.id}"]'
        page.wait_for_selector(row, timeout=10_000)
        seen = []  # the tiles cell, as the page showed it while the job ran
        t0 = time.monotonic()
        while time.monotonic() - t0 < 240:
            status = page.inner_text(f"{row} .status")
            seen.append((status, page.inner_text(f"{row} .tiles")))
            if status in ("succeeded", "failed", "cancelled"):
                break
            if len(seen) == 5:
                running = _shot(page, tmp_path, "web-running")
            time.sleep(0.1)
        info = c.job(job.id).info
        assert info["status"] == "succeeded" and seen[-1] == (
            "succeeded", f"{info['tiles_total']}/{info['tiles_total']}"), seen[-5:]
        # what the page's event stream delivered: every status from queued on, tiles rising
        statuses = page.get_attribute(row, "data-statuses")
        assert statuses == "queued,running,succeeded", statuses
        tiles = [int(t) for t in page.get_attribute(row, "data-tiles").split(",")]
        assert tiles == sorted(tiles) and tiles[-1] == info["tiles_total"]
        assert len(set(tiles)) >= 3, tiles
        shown = [int(t.split("/")[0]) for s, t in seen]
        assert len(set(shown)) >= 3 and shown == sorted(shown), seen  # it rose on the page
        assert running.size[0] > 0

        page.click(row)
        page.wait_for_selector(f'#job-detail[data-ready="{job.id}"]', timeout=30_000)
        eig_text = page.inner_text("#eigs")
        m = min(512, 160)
        k = job.block("ntk", rows=(0, m), cols=(0, m))
        ref = np.linalg.eigvalsh((k + k.T) / 2)[::-1][:5]
        np.testing.assert_allclose([float(v) for v in eig_text.split(",")], ref, rtol=1e-5)
        assert page.inner_text("#job-detail .block") == f"{m}\N{MULTIPLICATION SIGN}{m}"
        colours, spread = _painted(page, "#heatmap")
        assert colours > 20 and spread > 10, (colours, spread)
        assert _painted(page, "#spectrum")[0] > 3
        assert page.get_attribute("#cluster", "data-workers") == str(
            c.health()["workers"])

        sol = c.solve(job, [1e-3, 1e-1], relative=True, solver="direct",
                      times=[0.1, 1.0, 10.0, 100.0]).wait(timeout=120)
        srow = f'#solves tr[data-id="{sol.id}"]'
        page.wait_for_selector(srow, timeout=10_000)
        page.click(srow)
        page.wait_for_selector("#metrics tbody tr")
        cells = page.locator("#metrics tbody tr").all_inner_texts()
        per = sol.metrics["per_lambda"]
        assert len(cells) == len(per)
        for text, entry in zip(cells, per, strict=True):
            assert f"{entry['accuracy']:.4g}"[:5] in text.replace("\t", " "), (text, entry)
        assert _painted(page, "#curves")[0] > 3  # the gradient-flow curve is drawn
        full = _shot(page, tmp_path, "web-page")
        assert full.size[1] > 600
        assert hidden not in page.content()  # the other key's job is nowhere on the page

        # the Dask dashboard, through the service with the key the page set as a cookie:
        # its Bokeh plots draw, so their WebSocket got through too
        link = page.get_attribute("#dashboard", "href")
        assert link == "/dashboard/status"
        page.goto(f"{service.url}{link}")
        page.wait_for_selector("canvas", timeout=30_000)
        assert page.locator("canvas").count() >= 5
        _shot(page, tmp_path, "web-dashboard")
        stranger = browser.new_page()  # no cookie: refused
        assert stranger.goto(f"{service.url}{link}").status == 401
        browser.close()
