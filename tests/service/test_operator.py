"""What an operator and a researcher watching a job see (issue 20), on the real service: the
event stream of a job, the client's wait on it, the Dask dashboard, paged lists with Link
headers, problem+json errors with Retry-After, ISO timestamps, lifecycle log lines."""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import datetime

import httpx
import numpy as np
import pytest

from ntkcompute.client import Client, JobFailed

from ..damage import flip_bit
from .conftest import make_key

FC = {"layers": [{"type": "dense"}, {"type": "relu"}, {"type": "dense"}]}
#: A CNTK whose tiles take long enough to watch a job run.
CONV = {"layers": [{"type": "conv", "filter_shape": [3, 3], "padding": "SAME"},
                   {"type": "relu"}, {"type": "global_avg_pool"}, {"type": "dense"}]}


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _events(url: str, key: str, out: list, opened: threading.Event) -> None:
    """Every (event, id, data) of the stream at ``url``, until it closes."""
    with httpx.stream("GET", url, headers=_h(key), timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith(
            "text/event-stream"), r.status_code
        opened.set()
        event, eid, data = None, None, []
        for line in r.iter_lines():
            if not line:
                if data:
                    out.append((event, eid, json.loads("\n".join(data))))
                event, eid, data = None, None, []
            elif line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("id:"):
                eid = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data.append(line.split(":", 1)[1].strip())


def test_event_stream_sends_every_change_in_order_then_the_final_state(service):
    key = make_key(service.db, "events")
    x = np.random.default_rng(0).standard_normal((96, 8, 8, 1))
    with Client(service.url, key) as c:
        ds = c.upload(x)
        job = c.kernel(ds, CONV, tile=8)  # 78 tiles: several progress writes
        got: list = []
        opened = threading.Event()
        t = threading.Thread(target=_events, daemon=True, args=(
            f"{service.url}/v1/kernels/{job.id}/events", key, got, opened))
        t.start()
        t.join(240)
        assert not t.is_alive()
        final = c.job(job.id).info
    revisions = [int(e[1]) for e in got]
    # every committed revision from the first one seen, each once, in order
    assert revisions == list(range(revisions[0], revisions[0] + len(got))), revisions
    assert revisions[-1] == final["revision"]
    assert [e[2]["revision"] for e in got] == revisions
    assert [e[0] for e in got] == ["state"] * (len(got) - 1) + ["end"]
    done = [e[2]["tiles_done"] for e in got]
    assert done == sorted(done) and done[-1] == final["tiles_total"] == 78
    statuses = [e[2]["status"] for e in got]
    assert statuses[-1] == "succeeded" and set(statuses) <= {"queued", "running", "succeeded"}
    assert statuses == sorted(statuses, key=["queued", "running", "succeeded"].index)
    assert "running" in statuses and len(got) >= 3  # it watched the job run, not just its end
    end = got[-1][2]
    assert end["tiles_per_second"] > 0 and datetime.fromisoformat(end["finished"])
    # a stream of a finished job is its final state at once; another key's is a 404
    again: list = []
    _events(f"{service.url}/v1/kernels/{job.id}/events", key, again, threading.Event())
    assert [(e[0], e[2]["status"]) for e in again] == [("end", "succeeded")]
    r = httpx.get(f"{service.url}/v1/kernels/{job.id}/events", headers=_h(service.key_a))
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"


def test_client_wait_follows_the_stream_and_does_not_poll(service):
    key = make_key(service.db, "wait")
    seen: list[tuple[str, str]] = []
    with Client(service.url, key) as c:
        c._http.event_hooks["request"].append(lambda r: seen.append((r.method, r.url.path)))
        ds = c.upload(np.random.default_rng(1).standard_normal((64, 5)), np.arange(64) % 2)
        job = c.kernel(ds, FC, tile=16)
        before = len(seen)
        job.wait(timeout=240, progress=False)
        during = seen[before:]
        assert during == [("GET", f"/v1/kernels/{job.id}/events")], during
        assert job.info["status"] == "succeeded"
        assert job.info["tiles_done"] == job.info["tiles_total"] == 10
        sol = c.solve(job, 0.1)
        before = len(seen)
        sol.wait(timeout=240)
        # the stream, then one GET for the metrics it does not carry
        assert seen[before:] == [("GET", f"/v1/solves/{sol.id}/events"),
                                 ("GET", f"/v1/solves/{sol.id}")], seen[before:]
        assert sol.metrics["per_lambda"]


def test_dashboard_is_served_with_bokeh_behind_the_keys_and_linked(service):
    ready = httpx.get(f"{service.url}/readyz").json()
    url = ready["dashboard_url"]
    assert url == "/dashboard/status", url  # the embedded cluster's, proxied by the service
    refused = httpx.get(f"{service.url}{url}", timeout=30)
    assert refused.status_code == 401 and refused.json()["field"] == "Authorization"
    for auth in ({"headers": _h(service.key_a)}, {"cookies": {"ntk_key": service.key_a}}):
        page = httpx.get(f"{service.url}{url}", timeout=30, **auth)
        assert page.status_code == 200 and "bokeh" in page.text.lower(), auth
        assert "Dask needs bokeh" not in page.text
    assert httpx.get(f"{service.url}{url}", cookies={"ntk_key": "ntk_x_y"}).status_code == 401
    with Client(service.url, service.key_a) as c:
        ds = c.upload(np.ones((4, 3)))
        job = c.kernel(ds, FC)
        assert job.dashboard_url == url
        job.cancel()


def test_dashboard_websockets_need_a_key_and_the_services_origin(service):
    import asyncio

    import websockets

    ws_url = service.url.replace("http", "ws", 1) + "/dashboard/status/ws"
    good = {"Cookie": f"ntk_key={service.key_a}"}

    async def handshake(headers: dict[str, str]) -> int | None:
        """The HTTP status that refused the handshake, None if it was accepted."""
        try:
            async with websockets.connect(ws_url, additional_headers=headers,
                                          open_timeout=30):
                return None
        except websockets.exceptions.InvalidStatus as e:
            return e.response.status_code

    assert asyncio.run(handshake({})) == 403  # no key
    assert asyncio.run(handshake({"Cookie": "ntk_key=ntk_x_y"})) == 403
    host = service.url.split("://", 1)[1]
    assert asyncio.run(handshake({**good, "Origin": "http://evil.example"})) == 403
    assert asyncio.run(handshake({**good, "Origin": f"http://{host}"})) is None


def test_lists_page_250_jobs_with_link_headers_in_a_stable_order(service):
    key = make_key(service.db, "pages")
    with Client(service.url, key) as c:
        ds = c.upload(np.ones((2, 3)))
        made = []
        for _ in range(250):  # submitted and cancelled at once: never over the job limit
            job = c.kernel(ds, FC, kernels=("nngp",))
            made.append(job.cancel().id)
        assert [j.id for j in c.jobs(page=64)] == made  # the client follows the pages
        pages, url = [], f"{service.url}/v1/kernels?limit=100"
        while url:
            r = httpx.get(url, headers=_h(key))
            assert r.status_code == 200 and r.headers["X-Total-Count"] == "250"
            pages.append((r.json(), r.links))
            nxt = r.links.get("next", {}).get("url")
            url = f"{service.url}{nxt}" if nxt else None
    assert [len(p) for p, _ in pages] == [100, 100, 50]
    assert [row["id"] for p, _ in pages for row in p] == made
    first, middle, last = (links for _, links in pages)
    assert first["next"]["url"] == "/v1/kernels?limit=100&offset=100" and "prev" not in first
    assert middle["prev"]["url"] == "/v1/kernels?limit=100&offset=0"
    assert middle["next"]["url"] == "/v1/kernels?limit=100&offset=200"
    assert last["prev"]["url"] == "/v1/kernels?limit=100&offset=100" and "next" not in last
    assert {p["last"]["url"] for p in (first, middle, last)} == {
        "/v1/kernels?limit=100&offset=200"}
    assert "arch" not in pages[0][0][0]  # a list answers summaries
    r = httpx.get(f"{service.url}/v1/kernels", params={"limit": 1001}, headers=_h(key))
    assert r.status_code == 422 and r.json()["field"] == "limit"


def test_solve_lists_carry_no_labels_and_times_are_iso(service):
    key = make_key(service.db, "summaries")
    with Client(service.url, key) as c:
        ds = c.upload(np.random.default_rng(2).standard_normal((12, 3)))
        job = c.kernel(ds, FC).wait(timeout=120, progress=False)
        labels = list(range(12))
        sol = c.solve(job, 0.5, labels=[float(v) for v in labels]).wait(timeout=120)
        listed = httpx.get(f"{service.url}/v1/solves", headers=_h(key)).json()
    assert [s["id"] for s in listed] == [sol.id]
    assert "labels" not in listed[0]["params"] and "analyses" not in listed[0]
    assert sol.info["params"]["labels"] == labels  # the solve itself has them
    for t in (sol.info["created"], sol.info["finished"], job.info["created"],
              job.info["started"], job.info["finished"]):
        assert datetime.fromisoformat(t).utcoffset().total_seconds() == 0, t


def test_job_limit_is_a_problem_with_retry_after(service):
    key = make_key(service.db, "limit")
    with Client(service.url, key) as c:
        ds = c.upload(np.random.default_rng(3).standard_normal((600, 8, 8, 1)))
        jobs = [c.kernel(ds, CONV, tile=30) for _ in range(3)]  # the fixture's limit is 3
        body = {"train": ds.id, "arch": CONV}
        r = httpx.post(f"{service.url}/v1/kernels", json=body, headers=_h(key))
        for j in jobs:
            j.cancel()
    assert r.status_code == 429 and r.headers["content-type"] == "application/problem+json"
    assert 1 <= int(r.headers["Retry-After"]) <= 3600
    p = r.json()
    assert p["type"] == "about:blank" and p["title"] == "Too Many Requests"
    assert p["status"] == 429 and p["field"] == "max_jobs_per_key"
    assert p["detail"].startswith("max_jobs_per_key: ") and p["instance"] == "/v1/kernels"


def test_lifecycle_lines_are_logged_and_polling_is_not_at_info(service):
    key = make_key(service.db, "logs")
    with Client(service.url, key) as c:
        ds = c.upload(np.random.default_rng(4).standard_normal((30, 4)))
        job = c.kernel(ds, FC, tile=10)
        for _ in range(5):
            job.refresh()  # polling GETs
        job.wait(timeout=120, progress=False)
    log = service.log.read_text()
    mine = [line for line in log.splitlines() if job.id in line]
    assert any(f"kernel {job.id} submitted" in m and "n_train=30" in m for m in mine), mine
    assert any(f"kernel {job.id} started" in m and "tiles=6" in m for m in mine), mine
    fin = [m for m in mine if f"kernel {job.id} finished" in m]
    assert len(fin) == 1 and "tiles=6" in fin[0], mine
    assert float(re.search(r"entries_per_second=([\d.e+]+)", fin[0]).group(1)) > 0
    assert float(re.search(r"seconds=([\d.e+-]+)", fin[0]).group(1)) > 0
    assert re.search(r"entries=1800\b", fin[0])  # 30² entries of two kernels
    # the job's POST is an access line; its polling GETs are not (they are at DEBUG)
    assert "POST /v1/kernels HTTP" in log
    assert not [m for m in log.splitlines() if f"GET /v1/kernels/{job.id} HTTP" in m]


def test_a_tile_that_fails_is_logged_with_its_task_and_worker(service):
    """The job's copy of its inputs changes on disk while it runs (a failing disk): the tiles
    that read it fail, each logged with the task that raised and the worker it ran on."""
    key = make_key(service.db, "tile-fails")
    with Client(service.url, key) as c:
        ds = c.upload(np.random.default_rng(5).standard_normal((200, 16, 16, 1)))
        job = c.kernel(ds, CONV, tile=10)  # 210 tiles
        t0 = time.monotonic()
        while job.refresh()["tiles_done"] < 1:  # started: its inputs were checked and copied
            assert time.monotonic() - t0 < 120, job.info
            time.sleep(0.1)
        x1 = service.root / "store" / "kernels" / job.id / "train" / "x1"
        chunks = [p for p in x1.rglob("*") if p.is_file() and p.name != "zarr.json"]
        assert chunks, "the job keeps its inputs' rows in chunks"
        for chunk in chunks:
            flip_bit(chunk, at=chunk.stat().st_size // 2)
        with pytest.raises(JobFailed, match="checksum"):
            job.wait(timeout=240, progress=False)

    def lines() -> list[str]:
        return [m for m in service.log.read_text().splitlines() if job.id in m]

    t0 = time.monotonic()
    while not any(f"kernel {job.id} failed" in m for m in lines()):
        assert time.monotonic() - t0 < 30, lines()
        time.sleep(0.2)
    failed = [m for m in lines() if "tile failed" in m]
    assert failed, lines()
    assert all(re.search(r"worker=tls://127\.0\.0\.1:\d+", m) for m in failed), failed
    assert all("task=" in m and "tile=" in m and "checksum" in m for m in failed), failed
    end = next(m for m in lines() if f"kernel {job.id} failed" in m)
    assert "seconds=" in end and "tiles=" in end, end
