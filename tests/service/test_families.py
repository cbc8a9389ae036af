"""Kernel families and selection through the real server (uvicorn, the embedded Dask
cluster, Zarr on disk): a ``depths`` job's members, read as blocks, equal each network's
kernel computed on its own (1e-12); solves name a member or ``select`` one by closed-form
leave-one-out, and the choice is the in-process ``select``'s."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

import ntkcompute as nc
from ntkcompute.client import ApiError, Client
from ntkcompute.families import kernel_family, make_family
from ntkcompute.regression import kernel_ridge, one_hot

FC = {"layers": [{"type": "repeat", "n": 1, "layer": {"type": "serial", "layers": [
    {"type": "dense", "W_std": 1.5, "b_std": 0.1}, {"type": "relu"}]}}, {"type": "dense"}]}
DEPTHS = [1, 2, 3, 5]


@pytest.fixture(scope="module")
def family_job(service):
    rng = np.random.default_rng(5)
    x, xt = rng.standard_normal((40, 6)), rng.standard_normal((15, 6))
    y, yt = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0), \
        (xt[:, 0] > 0).astype(np.int64) + (xt[:, 1] > 0)
    with Client(service.url, service.key_a) as c:
        job = c.kernel(c.upload(x, y), FC, test=c.upload(xt, yt), tile=16, depths=DEPTHS)
        job.wait(progress=False)
        yield c, job, (x, y, xt, yt)


def test_members_read_back_equal_separate_kernels(family_job):
    _, job, (x, _, xt, _) = family_job
    assert job.info["depths"] == DEPTHS and job.depths == DEPTHS
    fam = make_family(FC, DEPTHS)
    for d, member in zip(DEPTHS, fam.members, strict=True):
        ref, ref_c = nc.kernel(member, x), nc.kernel(member, xt, x)
        for kind in ("ntk", "nngp"):
            got = job.to_numpy(kind, "train", depth=d)
            got_c = job.to_numpy(kind, "test", depth=d)
            assert np.abs(got - ref[kind]).max() <= 1e-12 * np.abs(ref[kind]).max()
            assert np.abs(got_c - ref_c[kind]).max() <= 1e-12 * np.abs(ref_c[kind]).max()
    block = job.block("ntk", (3, 9), (10, 20), depth=3)
    np.testing.assert_array_equal(block, job.to_numpy("ntk", depth=3)[3:9, 10:20])
    for depth, field in ((None, "depth"), (4, "depth")):
        with pytest.raises(ApiError) as e:
            job.block("ntk", depth=depth)
        assert e.value.status == 422 and e.value.field == field


def test_a_solve_names_a_member_or_selects_one(family_job, service):
    c, job, (x, y, xt, yt) = family_job
    fam = make_family(FC, DEPTHS)
    member = fam.member(3)
    s = c.solve(job, 1e-2, relative=True, solver="direct", depth=3).wait()
    want = kernel_ridge(nc.kernel(member, x)["ntk"], one_hot(y, 3),
                        nc.kernel(member, xt, x)["ntk"], lam=1e-2, relative=True)
    got = s.predictions()
    assert np.abs(got - want).max() <= 1e-10 * np.abs(want).max()

    grid = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    sel = c.solve(job, grid, relative=True, solver="direct",
                  select={"kinds": ["ntk", "nngp"]}).wait()
    chosen = sel.info["analyses"]["selection"]
    ref = nc.select(kernel_family(fam, x), y, lambdas=grid, relative=True)
    assert chosen["criterion"] == "accuracy" and len(chosen["table"]) == len(ref.table)
    for key in ("depth", "kernel", "lam"):
        assert chosen["best"][key] == ref.best[key]
    assert abs(chosen["best"]["accuracy"] - ref.best["accuracy"]) < 1e-12
    best = fam.member(ref.best["depth"])
    kind = ref.best["kernel"]
    want = kernel_ridge(nc.kernel(best, x)[kind], one_hot(y, 3), nc.kernel(best, xt, x)[kind],
                        lam=ref.best["lam"], relative=True)
    assert np.abs(sel.predictions() - want).max() <= 1e-10 * np.abs(want).max()
    assert sel.metrics["per_lambda"][0]["accuracy"] == float(
        np.mean(want.argmax(1) == yt))

    # the default grid (relative), GCV, a subset of the members
    gcv = c.solve(job, solver="direct", select={"criterion": "gcv", "depths": [1, 5]}).wait()
    table = gcv.info["analyses"]["selection"]["table"]
    assert {r["depth"] for r in table} == {1, 5} and len(table) == 2 * 15

    # gradient-flow time as the regulariser: the chosen (depth, kernel, t), then that net
    ts = [0.1, 1.0, 10.0, 100.0]
    flow = c.solve(job, solver="direct", select={"times": ts, "lr": 0.5}).wait()
    chosen = flow.info["analyses"]["selection"]
    ref = nc.select(kernel_family(fam, x), y, times=ts, lr=0.5, relative=True)
    assert chosen["best"]["t"] == ref.best["t"] and chosen["best"]["depth"] == ref.best["depth"]
    best = fam.member(ref.best["depth"])
    k = nc.kernel(best, x)["ntk"]
    ev, u = np.linalg.eigh(k)
    t_abs = ref.best["t_absolute"]
    gain = -np.expm1(-0.5 * t_abs * ev) / ev
    want = nc.kernel(best, xt, x)["ntk"] @ (u @ (gain[:, None] * (u.T @ one_hot(y, 3))))
    assert flow.info["analyses"]["flow_time"] == {"t": t_abs, "lr": 0.5}
    assert np.abs(flow.predictions() - want).max() <= 1e-9 * np.abs(want).max()

    refused = [({"depth": None}, "depth"),  # a family needs a member, or select
               ({"depth": 4}, "depth"),
               ({"select": {}, "solver": "cg"}, "select"),
               ({"select": {"depths": [4]}}, "select.depths"),
               ({"select": {}, "depth": 3}, "depth"),
               ({"select": {}, "lambdas": [0.0, 1.0]}, "lambdas"),
               ({"select": {"criterion": "best"}}, "select.criterion"),
               ({"select": {"times": [0.0]}}, "select.times[0]")]
    for extra, field in refused:
        body = {"kernel": job.id, "solver": "direct", **extra}
        r = httpx.post(f"{service.url}/v1/solves", json=body,
                       headers={"Authorization": f"Bearer {service.key_a}"})
        assert r.status_code == 422, (extra, r.text)
        assert r.json()["field"] == field, (extra, r.json())


def test_family_requests_are_bounded_before_the_work(family_job, service):
    _, job, _ = family_job
    headers = {"Authorization": f"Bearer {service.key_a}"}
    train = job.info["train"]
    no_repeat = nc.architectures.fc(2)
    for arch, depths, field in ((FC, [1, 2000], "depths[1]"), (FC, [3, 2], "depths"),
                                (FC, list(range(1, 70)), "depths"),
                                (no_repeat, [1, 2], "layers")):
        r = httpx.post(f"{service.url}/v1/kernels", headers=headers,
                       json={"train": train, "arch": arch, "depths": depths})
        assert r.status_code == 422, (depths, r.text)
        assert r.json()["field"] == field, (depths, r.json())
    r = httpx.post(f"{service.url}/v1/kernels", headers=headers,
                   json={"train": train, "arch": FC, "depths": [1, 2], "method": "features",
                         "m": 16})
    assert r.status_code == 422 and r.json()["field"] == "depths"


def test_variants_through_the_service(family_job, service):
    """A ``variants`` job: every (depth, variant) NTK read back equals the network with its
    bottom blocks fixed (1e-12); solves name a variant or select over them; requests that
    name a variant wrongly are refused before the work."""
    c, _, (x, y, xt, yt) = family_job
    variants = [0, 1, 2]
    fam = make_family(FC, [1, 3], variants)
    job = c.kernel(c.upload(x, y), FC, test=c.upload(xt, yt), tile=16, depths=[1, 3],
                   variants=variants)
    job.wait(progress=False)
    assert job.variants == variants and job.info["variants"] == variants
    for d in (1, 3):
        for v in variants:
            member = fam.member(d, v)
            ref, ref_c = nc.kernel(member, x)["ntk"], nc.kernel(member, xt, x)["ntk"]
            got = job.to_numpy("ntk", "train", depth=d, variant=v)
            got_c = job.to_numpy("ntk", "test", depth=d, variant=v)
            assert np.abs(got - ref).max() <= 1e-12 * np.abs(ref).max(), (d, v)
            assert np.abs(got_c - ref_c).max() <= 1e-12 * np.abs(ref_c).max(), (d, v)
    np.testing.assert_array_equal(job.to_numpy("nngp", depth=3),
                                  nc.kernel(fam.member(3), x)["nngp"])
    for params, field in (({"depth": 3}, "variant"), ({"depth": 3, "variant": 5}, "variant")):
        with pytest.raises(ApiError) as e:
            job.block("ntk", **params)
        assert e.value.status == 422 and e.value.field == field, params

    s = c.solve(job, 1e-2, relative=True, solver="direct", depth=3, variant=1).wait()
    member = fam.member(3, 1)
    want = kernel_ridge(nc.kernel(member, x)["ntk"], one_hot(y, 3),
                        nc.kernel(member, xt, x)["ntk"], lam=1e-2, relative=True)
    assert np.abs(s.predictions() - want).max() <= 1e-10 * np.abs(want).max()
    grid = [1e-3, 1e-1]
    sel = c.solve(job, grid, solver="direct", select={"kinds": ["ntk", "nngp"]}).wait()
    chosen = sel.info["analyses"]["selection"]
    ref = nc.select(kernel_family(fam, x), y, lambdas=grid, relative=True)
    assert len(chosen["table"]) == len(ref.table) == (2 * 3 + 2) * 2
    for key in ("depth", "variant", "kernel", "lam"):
        assert chosen["best"][key] == ref.best[key], key
    headers = {"Authorization": f"Bearer {service.key_a}"}
    for body, field in (({"depth": 3}, "variant"), ({"depth": 3, "variant": 4}, "variant"),
                        ({"select": {"variants": [4]}, "solver": "direct"},
                         "select.variants"),
                        ({"select": {}, "variant": 1, "solver": "direct"}, "variant")):
        r = httpx.post(f"{service.url}/v1/solves", headers=headers,
                       json={"kernel": job.id, "lambdas": [0.1], **body})
        assert r.status_code == 422 and r.json()["field"] == field, (body, r.text)
    train = job.info["train"]
    for body, field in (({"variants": [0, 1]}, "variants"),
                        ({"depths": [1, 2], "variants": [3]}, "variants"),
                        ({"depths": [1, 2], "variants": [1, 0]}, "variants"),
                        ({"depths": [1, 2], "variants": [-1]}, "variants[0]")):
        r = httpx.post(f"{service.url}/v1/kernels", headers=headers,
                       json={"train": train, "arch": FC, **body})
        assert r.status_code == 422 and r.json()["field"] == field, (body, r.text)


def test_a_bias_grid_through_the_service(family_job, service):
    """``b_stds``: members read back equal each network alone (1e-12); a solve names a
    b_std or a selection chooses one (the in-process choice); wrong names are refused."""
    c, _, (x, y, xt, yt) = family_job
    fam = make_family(FC, [1, 2], b_stds=[0.0, 1.0])
    job = c.kernel(c.upload(x, y), FC, test=c.upload(xt, yt), tile=16, depths=[1, 2],
                   b_stds=[0, 1])
    job.wait(progress=False)
    assert job.b_stds == [0.0, 1.0]
    for b in (0.0, 1.0):
        for d in (1, 2):
            ref = nc.kernel(fam.member(d, 0, b), xt, x)
            for kind in ("ntk", "nngp"):
                got = job.to_numpy(kind, "test", depth=d, b_std=b)
                assert np.abs(got - ref[kind]).max() <= 1e-12 * np.abs(ref[kind]).max()
    s = c.solve(job, 1e-2, relative=True, solver="direct", depth=2, b_std=1).wait()
    member = fam.member(2, 0, 1.0)
    want = kernel_ridge(nc.kernel(member, x)["ntk"], one_hot(y, 3),
                        nc.kernel(member, xt, x)["ntk"], lam=1e-2, relative=True)
    assert np.abs(s.predictions() - want).max() <= 1e-10 * np.abs(want).max()
    sel = c.solve(job, [1e-3, 1e-1], solver="direct", select={"kinds": ["ntk", "nngp"]}).wait()
    chosen = sel.info["analyses"]["selection"]
    ref = nc.select(kernel_family(fam, x), y, lambdas=[1e-3, 1e-1], relative=True)
    assert len(chosen["table"]) == len(ref.table) == 2 * 2 * 2 * 2
    for key in ("b_std", "depth", "kernel", "lam"):
        assert chosen["best"][key] == ref.best[key], key
    with pytest.raises(ApiError) as e:
        job.block("ntk", depth=2)
    assert e.value.status == 422 and e.value.field == "b_std"
    headers = {"Authorization": f"Bearer {service.key_a}"}
    for body, field in (({"depth": 2}, "b_std"), ({"depth": 2, "b_std": 0.5}, "b_std"),
                        ({"select": {"b_stds": [2.0]}, "solver": "direct"},
                         "select.b_stds")):
        r = httpx.post(f"{service.url}/v1/solves", headers=headers,
                       json={"kernel": job.id, "lambdas": [0.1], **body})
        assert r.status_code == 422 and r.json()["field"] == field, (body, r.text)
    for body, field in (({"b_stds": [0, 1]}, "b_stds"),
                        ({"depths": [1], "b_stds": [1, 0]}, "b_stds"),
                        ({"depths": [1], "b_stds": [-1]}, "b_stds[0]"),
                        ({"depths": [1], "b_stds": list(range(9))}, "b_stds")):
        r = httpx.post(f"{service.url}/v1/kernels", headers=headers,
                       json={"train": job.info["train"], "arch": FC, **body})
        assert r.status_code == 422 and r.json()["field"] == field, (body, r.text)


def test_a_selection_by_validation_runs_on_cg(family_job, service):
    """``select: {criterion: validation}`` with solver 'cg': every candidate fit by CG on
    the kept rows and scored on the held-out split; the solve is then CG at the choice."""
    c, job, (x, y, xt, _) = family_job
    grid = [1e-3, 1e-1]
    sel = c.solve(job, grid, relative=True, solver="cg", tol=1e-10,
                  select={"criterion": "validation", "validation": 0.25, "seed": 1,
                          "kinds": ["ntk"], "depths": [1, 3]}).wait()
    chosen = sel.info["analyses"]["selection"]
    assert chosen["criterion"] == "validation" and len(chosen["table"]) == 2 * 2
    assert chosen["best"] == max(chosen["table"], key=lambda r: (r["accuracy"], -r["mse"]))
    member = make_family(FC, DEPTHS).member(chosen["best"]["depth"])
    want = kernel_ridge(nc.kernel(member, x)["ntk"], one_hot(y, 3),
                        nc.kernel(member, xt, x)["ntk"], lam=chosen["best"]["lam"],
                        relative=True)
    assert np.abs(sel.predictions() - want).max() <= 1e-6 * np.abs(want).max()
    headers = {"Authorization": f"Bearer {service.key_a}"}
    for body, field in (({"select": {"criterion": "validation", "times": [1.0]}},
                         "select.times"),
                        ({"select": {"criterion": "validation", "validation": 0.7}},
                         "select.validation")):
        r = httpx.post(f"{service.url}/v1/solves", headers=headers,
                       json={"kernel": job.id, "solver": "cg", **body})
        assert r.status_code == 422 and r.json()["field"] == field, (body, r.text)


def test_preprocessing_is_an_option_of_a_kernel_job(family_job, service):
    """``preprocess``: the stored kernels are those of the inputs transformed by ZCA and
    standardisation fit on the train rows (1e-12); refusals name the field."""
    from ntkcompute.preprocess import ZCA, Standardize

    c, _, (x, y, xt, yt) = family_job
    arch = nc.architectures.fc(2)
    job = c.kernel(c.upload(x, y), arch, test=c.upload(xt, yt), tile=16,
                   preprocess={"zca": 0.1, "standardize": True})
    job.wait(progress=False)
    assert job.info["preprocess"] == {"zca": 0.1, "standardize": True}  # (flip: off)
    zca = ZCA.fit(x, 0.1)
    std = Standardize.fit(zca(x))
    ref = nc.kernel(arch, std(zca(xt)), std(zca(x)))
    for kind in ("ntk", "nngp"):
        got = job.to_numpy(kind, "test")
        assert np.abs(got - ref[kind]).max() <= 1e-12 * np.abs(ref[kind]).max()
    headers = {"Authorization": f"Bearer {service.key_a}"}
    for prep, field, extra in (({"zca": -1}, "preprocess.zca", {}),
                               ({"whiten": True}, "preprocess.whiten", {}),
                               ({"zca": 0.1}, "preprocess", {"method": "features", "m": 8}),
                               ({"flip": True}, "preprocess.flip", {})):  # vectors
        r = httpx.post(f"{service.url}/v1/kernels", headers=headers,
                       json={"train": job.info["train"], "arch": arch, "preprocess": prep,
                             **extra})
        assert r.status_code == 422 and r.json()["field"] == field, (prep, r.text)


def test_cli_submit_a_family_fetch_and_solve_a_member(service, tmp_path):
    import json

    from .test_cli import ntk

    rng = np.random.default_rng(8)
    x = rng.standard_normal((24, 5))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(24) % 2)
    (tmp_path / "arch.json").write_text(json.dumps(FC))
    kw = dict(key=service.key_a, url=service.url)
    out = ntk("submit", "--arch", str(tmp_path / "arch.json"), "--train",
              str(tmp_path / "x.npy"), "--train-labels", str(tmp_path / "y.npy"),
              "--depths", "2,3", "--variants", "0,1", "--b-stds", "0,1", "--wait", "--quiet",
              **kw)
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert job["depths"] == [2, 3] and job["variants"] == [0, 1] and job["b_stds"] == [0, 1]
    assert job["status"] == "succeeded"
    got = ntk("fetch", job["id"], "--out", str(tmp_path / "k.npy"), "--depth", "3",
              "--variant", "1", "--b-std", "1", **kw)
    assert got.returncode == 0, got.stderr
    want = nc.kernel(make_family(FC, [3], [1]).member(3, 1, 1.0), x)["ntk"]
    k = np.load(tmp_path / "k.npy")
    assert np.abs(k - want).max() <= 1e-12 * np.abs(want).max()
    s = ntk("solve", "--kernel", job["id"], "--lambda", "1e-2", "--relative", "--solver",
            "direct", "--depth", "2", "--variant", "0", "--b-std", "0", "--wait", **kw)
    assert s.returncode == 0, s.stderr
    assert json.loads(s.stdout)["status"] == "succeeded"
    bad = ntk("fetch", job["id"], "--out", str(tmp_path / "k2.npy"), **kw)
    assert bad.returncode == 1 and "depth" in bad.stderr
