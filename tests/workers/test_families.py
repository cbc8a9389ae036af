"""Family jobs on real Dask workers and real Zarr: every member of a ``depths`` job equals
the kernel of that network computed on its own (1e-12), the store's ``depth`` axis is named
and read per member, damage is named per member and repaired exactly, and solves pick a
member."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

import ntkcompute as nc
import workers
from ntkcompute import InputError
from ntkcompute.families import kernel_family, make_family
from ntkcompute.regression import kernel_ridge, one_hot
from workers.store import CorruptChunk, kernel_array, read

CONV = {"type": "conv", "filter_shape": [3, 3], "padding": "SAME", "W_std": 1.4, "b_std": 0.1}
CNTK = {"layers": [{"type": "repeat", "n": 1, "layer": {"type": "serial", "layers": [
    CONV, {"type": "relu"}]}}, {"type": "global_avg_pool"}, {"type": "dense"}]}
FC = {"layers": [{"type": "repeat", "n": 1, "layer": {"type": "serial", "layers": [
    {"type": "dense", "W_std": 1.4, "b_std": 0.1}, {"type": "relu"}]}}, {"type": "dense"}]}
DEPTHS = [1, 2, 4]


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(11)
    return rng.standard_normal((13, 4, 4, 2)), rng.standard_normal((6, 4, 4, 2))


def _close(a, b, what):
    assert a.shape == b.shape, what
    assert np.abs(a - b).max() <= 1e-12 * np.abs(b).max(), what


def test_members_equal_separate_kernels_symmetric_and_cross(client, tmp_path, images):
    x, xt = images
    fam = make_family(CNTK, DEPTHS)
    sym = workers.compute_gram(CNTK, x, store=str(tmp_path / "sym"), tile=5, client=client,
                               depths=DEPTHS).wait()
    cross = workers.compute_gram(CNTK, xt, x, store=str(tmp_path / "cross"), tile=5,
                                 client=client, depths=DEPTHS).wait()
    assert sym.tiles_total == 6 and cross.tiles_total == 6 and sym.depths == DEPTHS
    got, got_c = sym.to_numpy(), cross.to_numpy()
    assert got["ntk"].shape == (3, 13, 13) and got_c["nngp"].shape == (3, 6, 13)
    inproc = kernel_family(fam, x)
    for d, member in zip(DEPTHS, fam.members, strict=True):
        ref, ref_c = nc.kernel(member, x), nc.kernel(member, xt, x)
        one, one_c = sym.member(d), cross.member(d)
        for g in ("ntk", "nngp"):
            _close(one[g], ref[g], (d, g))
            _close(one_c[g], ref_c[g], (d, g, "cross"))
            assert np.array_equal(one[g], one[g].T)
            _close(inproc[g][DEPTHS.index(d)], one[g], (d, g, "in-process"))
    # a member's self statistics: its own NNGP diagonal, a column of (n, D)
    diag = read(zarr.open_group(cross.url, mode="r")["self/x1/diag_nngp"])
    assert diag.shape == (6, 3)
    for k, member in enumerate(fam.members):
        _close(diag[:, k], np.diag(nc.kernel(member, xt)["nngp"]), k)
    # rerun: every tile is reused
    again = workers.compute_gram(CNTK, x, store=sym.url, tile=5, client=client,
                                 depths=DEPTHS).wait()
    assert (again.tiles_reused, again.tiles_computed) == (6, 0)


def test_store_names_the_depth_axis_and_refuses_unnamed_members(client, tmp_path):
    x = np.random.default_rng(2).standard_normal((9, 5))
    job = workers.compute_gram(FC, x, store=str(tmp_path / "fc"), tile=4, client=client,
                               depths=[2, 3]).wait()
    g = zarr.open_group(job.url, mode="r")
    assert g["ntk"].shape == (2, 9, 9) and g["ntk"].chunks == (1, 4, 4)
    assert g["ntk"].metadata.dimension_names == ("depth", "i", "j")
    assert g["ntk"].attrs["depths"] == [2, 3]
    ds = job.to_xarray()
    assert ds["ntk"].dims == ("depth", "i", "j") and list(ds["depth"].values) == [2, 3]
    np.testing.assert_array_equal(ds["ntk"].sel(depth=3).values, job.member(3)["ntk"])
    with pytest.raises(InputError, match=r"family of depths \[2, 3\]") as e:
        kernel_array(g, "ntk")
    assert e.value.field == "depth"
    with pytest.raises(InputError, match="one of the family's depths") as e:
        kernel_array(g, "ntk", 1)
    assert e.value.field == "depth"
    plain = workers.compute_gram(nc.architectures.fc(2), x, store=str(tmp_path / "plain"),
                                 tile=4, client=client).wait()
    with pytest.raises(InputError, match="one network") as e:
        kernel_array(plain.group, "ntk", 2)
    assert e.value.field == "depth"
    with pytest.raises(InputError) as e:  # a family needs one top-level repeat
        workers.compute_gram(nc.architectures.fc(2), x, store=str(tmp_path / "bad"),
                             client=client, depths=[1, 2])
    assert e.value.field == "layers"
    with pytest.raises(InputError) as e:  # families are float64 (no float32 refinement)
        workers.plan_job(FC, x.astype(np.float32), depths=[1, 2], dtype="float32")
    assert e.value.field == "dtype"
    assert workers.plan_job(FC, x.astype(np.float32), depths=[1, 2]).dtype == np.float64
    for other in ({"depths": [2, 4]}, {}, {"depths": [2, 3], "variants": [0]}):
        with pytest.raises(InputError) as e:  # the same store, another family: another job
            workers.compute_gram(FC, x, store=job.url, tile=4, client=client, **other)
        assert e.value.field == "store", other


def test_a_damaged_member_is_named_and_repaired_exactly(client, tmp_path, images):
    x, _ = images
    store = str(tmp_path / "job")
    job = workers.compute_gram(CNTK, x, store=store, tile=5, client=client,
                               depths=DEPTHS).wait()
    original = job.to_numpy()
    Path(store, "ntk", "c", "1", "0", "2").unlink()  # member 1 (depth 2), tile (0, 2)
    g = zarr.open_group(store, mode="r")
    with pytest.raises(CorruptChunk, match=r"ntk chunk \[1, 0, 2\]: missing"):
        read(kernel_array(g, "ntk", 2))
    np.testing.assert_array_equal(read(kernel_array(g, "ntk", 4)), original["ntk"][2])
    rep = workers.verify_job(store, client=client)
    assert [(b["array"], b["chunk"], b["tile"]) for b in rep.bad] == [("ntk", [1, 0, 2],
                                                                       [0, 2])]
    with pytest.raises(CorruptChunk):
        workers.solve(store, np.arange(13) % 2, 1e-2, solver="direct", save=None, depth=2)
    fixed = workers.compute_gram(CNTK, x, store=store, tile=5, client=client, depths=DEPTHS,
                                 verify=True).wait()
    assert (fixed.tiles_computed, fixed.tiles_reused) == (1, 5)
    for k, v in fixed.to_numpy().items():
        assert np.array_equal(v, original[k])


@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_a_solve_picks_a_member(client, tmp_path, images, solver):
    x, xt = images
    y, yt = np.arange(13) % 3, np.arange(6) % 3
    train = workers.compute_gram(CNTK, x, store=str(tmp_path / "t"), tile=5, client=client,
                                 depths=DEPTHS).wait()
    cross = workers.compute_gram(CNTK, xt, x, store=str(tmp_path / "c"), tile=5,
                                 client=client, depths=DEPTHS).wait()
    fam = make_family(CNTK, DEPTHS)
    for d, member in zip(DEPTHS, fam.members, strict=True):
        res = workers.solve(train.url, y, 1e-2, solver=solver, depth=d, cross=cross.url,
                            test_labels=yt, client=client, save=None, tol=1e-12,
                            preconditioner=None, relative=True)
        k, kc = nc.kernel(member, x)["ntk"], nc.kernel(member, xt, x)["ntk"]
        want = kernel_ridge(k, one_hot(y, 3), kc, lam=1e-2, relative=True)
        tol = 1e-10 if solver == "direct" else 1e-7
        assert np.abs(res.predictions - want).max() <= tol * np.abs(want).max(), (d, solver)
    with pytest.raises(InputError) as e:
        workers.solve(train.url, y, 1e-2, solver=solver, client=client, save=None)
    assert e.value.field == "depth"
    plain = workers.compute_gram(fam.members[0], xt, x, store=str(tmp_path / "p"), tile=5,
                                 client=client).wait()
    with pytest.raises(InputError, match="one network") as e:
        workers.solve(train.url, y, 1e-2, solver=solver, depth=1, cross=plain.url,
                      client=client, save=None)
    assert e.value.field == "cross"


def test_cli_gram_depths_and_solve_depth(tmp_path):
    """``ntk gram --depths --variants --zca --standardize`` stores the family of the
    transformed inputs; ``ntk solve --depth --variant`` solves on one member (the embedded
    cluster of each command)."""
    import json
    import subprocess
    import sys

    rng = np.random.default_rng(4)
    x = rng.standard_normal((20, 5))
    y = np.arange(20) % 2
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    (tmp_path / "arch.json").write_text(json.dumps(FC))
    store = str(tmp_path / "fam")
    ntk = [sys.executable, "-m", "ntkcli"]
    r = subprocess.run([*ntk, "gram", "--arch", str(tmp_path / "arch.json"), "--x1",
                        str(tmp_path / "x.npy"), "--out", store, "--depths", "1,3",
                        "--variants", "0,2", "--zca", "0.5", "--standardize", "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    arrays = json.loads(r.stdout.splitlines()[-1])["arrays"]
    assert arrays["ntk"] == [2, 2, 20, 20] and arrays["nngp"] == [2, 20, 20]
    r = subprocess.run([*ntk, "solve", "--kernel", store, "--labels", str(tmp_path / "y.npy"),
                        "--lambda", "1e-2", "--relative", "--solver", "direct", "--depth",
                        "3", "--variant", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from ntkcompute.preprocess import ZCA, Standardize

    member = make_family(FC, [3], [2]).member(3, 2)
    zca = ZCA.fit(x, 0.5)
    k = nc.kernel(member, Standardize.fit(zca(x))(zca(x)))["ntk"]
    want = np.linalg.solve(k + 1e-2 * np.mean(np.diag(k)) * np.eye(20), one_hot(y, 2))
    got = read(zarr.open_group(store, mode="r")["solves/default/coefficients"])
    assert np.abs(got - want).max() <= 1e-9 * np.abs(want).max()
    r = subprocess.run([*ntk, "solve", "--kernel", store, "--labels", str(tmp_path / "y.npy"),
                        "--lambda", "1e-2", "--solver", "direct"], capture_output=True,
                       text=True)
    assert r.returncode != 0 and "depth" in r.stderr


def test_select_member_reads_members_one_at_a_time_and_equals_select(client, tmp_path,
                                                                      images):
    x, _ = images
    y = np.arange(13) % 3
    grid = [1e-3, 1e-2, 1e-1]
    fam_job = workers.compute_gram(CNTK, x, store=str(tmp_path / "f"), tile=5, client=client,
                                   depths=DEPTHS).wait()
    got = workers.select_member(fam_job.url, y, kinds=["ntk", "nngp"], depths=[2, 4],
                                lambdas=grid)
    fam = make_family(CNTK, [2, 4])
    want = nc.select(kernel_family(fam, x), y, lambdas=grid)
    assert [(r["depth"], r["kernel"], r["lam"]) for r in got.table] == \
        [(r["depth"], r["kernel"], r["lam"]) for r in want.table]
    np.testing.assert_allclose([r["loo"] for r in got.table], [r["loo"] for r in want.table],
                               rtol=1e-9)
    assert (got.best["depth"], got.best["kernel"], got.best["lam"]) == \
        (want.best["depth"], want.best["kernel"], want.best["lam"])
    plain = workers.compute_gram(fam.members[0], x, store=str(tmp_path / "p"), tile=5,
                                 client=client).wait()
    one = workers.select_member(plain.url, y, kinds=["ntk", "nngp"], lambdas=grid)
    k = nc.kernel(fam.members[0], x)
    ref = nc.select({"ntk": k["ntk"], "nngp": k["nngp"]}, y, lambdas=grid)
    assert {r["kernel"] for r in one.table} == {"ntk", "nngp"}
    assert (one.best["kernel"], one.best["lam"]) == (ref.best["kernel"], ref.best["lam"])
    for kwargs, field in (({"depths": [3]}, "depths"), ({"kinds": ["rbf"]}, "kinds")):
        with pytest.raises(InputError) as e:
            workers.select_member(fam_job.url, y, **kwargs)
        assert e.value.field == field
    with pytest.raises(InputError) as e:
        workers.select_member(plain.url, y, depths=[1])
    assert e.value.field == "depths"
    Path(fam_job.url, "nngp", "c", "1", "1", "1").unlink()  # damage: named, never scored
    with pytest.raises(CorruptChunk, match=r"nngp chunk \[1, 1, 1\]"):
        workers.select_member(fam_job.url, y, kinds=["nngp"])


def test_a_gradient_flow_solve_and_its_refusals(client, tmp_path, images):
    x, _ = images
    y = np.arange(13) % 3
    job = workers.compute_gram(CNTK, x, store=str(tmp_path / "t"), tile=5, client=client,
                               depths=DEPTHS).wait()
    res = workers.solve(job.url, y, 0.0, solver="direct", depth=2, flow_time=3.0, lr=0.5,
                        save=None)
    k = nc.kernel(make_family(CNTK, [2]).members[0], x)["ntk"]
    ev, u = np.linalg.eigh(k)
    want = u @ ((-np.expm1(-1.5 * ev) / ev)[:, None] * (u.T @ one_hot(y, 3)))
    assert np.abs(res.coefficients - want).max() <= 1e-9 * np.abs(want).max()
    assert res.analyses["flow_time"] == {"t": 3.0, "lr": 0.5}
    for kw, field in (({"solver": "cg"}, "flow_time"), ({"lam": 1e-3}, "lambdas"),
                      ({"flow_time": -1.0}, "flow_time")):
        args = {"lam": 0.0, "solver": "direct", "flow_time": 3.0, **kw}
        with pytest.raises(InputError) as e:
            workers.solve(job.url, y, args.pop("lam"), depth=2, save=None, client=client,
                          **args)
        assert e.value.field == field


def test_variants_are_an_axis_of_the_ntk_read_named_and_repaired(client, tmp_path, images):
    """A ``variants`` job: ``ntk`` (D, V, n1, n2) [depth, variant, i, j], every (depth,
    variant) member equal to the spec with its bottom blocks fixed, computed on its own
    (1e-12); ``nngp`` keeps (D, n1, n2); a deleted member chunk is named with all four
    coordinates and repaired bit for bit."""
    x, xt = images
    variants = [0, 1, 3]
    fam = make_family(CNTK, DEPTHS, variants)
    store = str(tmp_path / "var")
    job = workers.compute_gram(CNTK, x, store=store, tile=5, client=client, depths=DEPTHS,
                               variants=variants).wait()
    cross = workers.compute_gram(CNTK, xt, x, store=str(tmp_path / "varc"), tile=5,
                                 client=client, depths=DEPTHS, variants=variants).wait()
    g = zarr.open_group(store, mode="r")
    assert g["ntk"].shape == (3, 3, 13, 13) and g["ntk"].chunks == (1, 1, 5, 5)
    assert g["ntk"].metadata.dimension_names == ("depth", "variant", "i", "j")
    assert g["nngp"].shape == (3, 13, 13) and g["ntk"].attrs["variants"] == variants
    assert g["self/x1/diag_ntk"].shape == (13, 3, 3) and job.variants == variants
    for d in DEPTHS:
        for v in variants:
            member = fam.member(d, v)
            ref, ref_c = nc.kernel(member, x), nc.kernel(member, xt, x)
            one, one_c = job.member(d, v), cross.member(d, v)
            for k in ("ntk", "nngp"):
                _close(one[k], ref[k], (d, v, k))
                _close(one_c[k], ref_c[k], (d, v, k, "cross"))
            np.testing.assert_allclose(read(g["self/x1/diag_ntk"])[:, DEPTHS.index(d),
                                                                  variants.index(v)],
                                       np.diag(ref["ntk"]), rtol=1e-12)
    ds = job.to_xarray()
    assert ds["ntk"].dims == ("depth", "variant", "i", "j") and ds["nngp"].dims[0] == "depth"
    np.testing.assert_array_equal(ds["ntk"].sel(depth=4, variant=1).values,
                                  job.member(4, 1)["ntk"])
    for bad, field in (((2, None), "variant"), ((2, 2), "variant"), ((None, 1), "depth")):
        with pytest.raises(InputError) as e:
            kernel_array(g, "ntk", *bad)
        assert e.value.field == field, bad
    np.testing.assert_array_equal(read(kernel_array(g, "nngp", 2)), job.member(2, 3)["nngp"])
    with pytest.raises(InputError) as e:  # variants are members of a family
        workers.plan_job(CNTK, x, variants=[0, 1])
    assert e.value.field == "variants"
    with pytest.raises(InputError) as e:
        workers.plan_job(CNTK, x, depths=DEPTHS, variants=[0, 5])
    assert e.value.field == "variants"

    original = job.to_numpy()
    Path(store, "ntk", "c", "2", "1", "0", "1").unlink()  # depth 4, variant 1, tile (0, 1)
    with pytest.raises(CorruptChunk, match=r"ntk chunk \[2, 1, 0, 1\]: missing"):
        read(kernel_array(g, "ntk", 4, 1))
    np.testing.assert_array_equal(read(kernel_array(g, "ntk", 4, 3)), original["ntk"][2, 2])
    rep = workers.verify_job(store, client=client)
    assert [(b["array"], b["chunk"], b["tile"]) for b in rep.bad] == [
        ("ntk", [2, 1, 0, 1], [0, 1])]
    fixed = workers.compute_gram(CNTK, x, store=store, tile=5, client=client, depths=DEPTHS,
                                 variants=variants, verify=True).wait()
    assert (fixed.tiles_computed, fixed.tiles_reused) == (1, 5)
    for k, v in fixed.to_numpy().items():
        assert np.array_equal(v, original[k])


def test_solves_and_selection_over_variants(client, tmp_path, images):
    """``solve(depth=, variant=)`` equals kernel ridge on that network's kernels;
    ``select_member`` over depths x variants equals the in-process ``select``."""
    x, xt = images
    y, yt = np.arange(13) % 3, np.arange(6) % 3
    variants = [0, 2]
    fam = make_family(FC, [1, 3], variants)
    xf, xtf = x.reshape(13, -1), xt.reshape(6, -1)
    kw = dict(tile=5, client=client, depths=[1, 3], variants=variants)
    train = workers.compute_gram(FC, xf, store=str(tmp_path / "t"), **kw).wait()
    cross = workers.compute_gram(FC, xtf, xf, store=str(tmp_path / "c"), **kw).wait()
    for solver in ("direct", "cg"):
        res = workers.solve(train.url, y, 1e-2, solver=solver, depth=3, variant=2,
                            cross=cross.url, test_labels=yt, client=client, save=None,
                            tol=1e-12, preconditioner=None, relative=True)
        member = fam.member(3, 2)
        want = kernel_ridge(nc.kernel(member, xf)["ntk"], one_hot(y, 3),
                            nc.kernel(member, xtf, xf)["ntk"], lam=1e-2, relative=True)
        tol = 1e-10 if solver == "direct" else 1e-7
        assert np.abs(res.predictions - want).max() <= tol * np.abs(want).max(), solver
    for kwargs, field in (({"depth": 3}, "variant"), ({"depth": 3, "variant": 1}, "variant")):
        with pytest.raises(InputError) as e:
            workers.solve(train.url, y, 1e-2, solver="direct", save=None, **kwargs)
        assert e.value.field == field
    grid = [1e-3, 1e-1]
    got = workers.select_member(train.url, y, kinds=["ntk", "nngp"], lambdas=grid,
                                variants=[2])
    k = kernel_family(fam, xf)
    want = nc.select({"depths": [1, 3], "variants": [2], "ntk": k["ntk"][:, 1:],
                      "nngp": k["nngp"]}, y, lambdas=grid)
    assert [(r["depth"], r["variant"], r["kernel"], r["lam"]) for r in got.table] == \
        [(r["depth"], r["variant"], r["kernel"], r["lam"]) for r in want.table]
    np.testing.assert_allclose([r["loo"] for r in got.table], [r["loo"] for r in want.table],
                               rtol=1e-9)
    assert len(got.table) == (2 + 2) * 2
    with pytest.raises(InputError) as e:
        workers.select_member(train.url, y, variants=[1])
    assert e.value.field == "variants"


def test_a_bias_grid_job_stores_solves_and_selects_every_b_std(client, tmp_path, images):
    """``b_stds``: a leading ``b_std`` axis on every kernel array (and B after the rows of
    the self statistics); every (b_std, depth, variant) member equals that network alone
    (1e-12); damage is named with all five coordinates and repaired; solves and
    ``select_member`` name or choose a b_std."""
    x, xt = images
    y, yt = np.arange(13) % 3, np.arange(6) % 3
    fam = make_family(CNTK, [1, 2], [0, 1], [0.0, 0.5])
    kw = dict(tile=5, client=client, depths=[1, 2], variants=[0, 1], b_stds=[0.0, 0.5])
    store = str(tmp_path / "b")
    job = workers.compute_gram(CNTK, x, store=store, **kw).wait()
    cross = workers.compute_gram(CNTK, xt, x, store=str(tmp_path / "bc"), **kw).wait()
    g = zarr.open_group(store, mode="r")
    assert g["ntk"].shape == (2, 2, 2, 13, 13) and g["nngp"].shape == (2, 2, 13, 13)
    assert g["ntk"].metadata.dimension_names == ("b_std", "depth", "variant", "i", "j")
    assert g["self/x1/var0"].shape[:2] == (13, 2) and g["self/x1/diag_nngp"].shape == (13, 2, 2)
    assert job.b_stds == [0.0, 0.5]
    for b in (0.0, 0.5):
        for d in (1, 2):
            for v in (0, 1):
                ref = nc.kernel(fam.member(d, v, b), xt, x)
                for k in ("ntk", "nngp"):
                    _close(cross.member(d, v, b)[k], ref[k], (b, d, v, k))
    ds = job.to_xarray()
    np.testing.assert_array_equal(ds["ntk"].sel(b_std=0.5, depth=2, variant=1).values,
                                  job.member(2, 1, 0.5)["ntk"])
    for bad, field in (({"depth": 2, "variant": 1}, "b_std"),
                       ({"depth": 2, "variant": 1, "b_std": 2.0}, "b_std")):
        with pytest.raises(InputError) as e:
            kernel_array(g, "ntk", **bad)
        assert e.value.field == field, bad
    res = workers.solve(job.url, y, 1e-2, solver="direct", depth=2, variant=1, b_std=0.5,
                        cross=cross.url, test_labels=yt, save=None, relative=True)
    member = fam.member(2, 1, 0.5)
    want = kernel_ridge(nc.kernel(member, x)["ntk"], one_hot(y, 3),
                        nc.kernel(member, xt, x)["ntk"], lam=1e-2, relative=True)
    assert np.abs(res.predictions - want).max() <= 1e-10 * np.abs(want).max()
    got = workers.select_member(job.url, y, kinds=["ntk", "nngp"], lambdas=[1e-2],
                                b_stds=[0.5])
    k = kernel_family(fam, x)
    want = nc.select({"b_stds": [0.5], "depths": [1, 2], "variants": [0, 1],
                      "ntk": k["ntk"][1:], "nngp": k["nngp"][1:]}, y, lambdas=[1e-2])
    assert [(r["b_std"], r["depth"], r["variant"], r["kernel"]) for r in got.table] == \
        [(r["b_std"], r["depth"], r["variant"], r["kernel"]) for r in want.table]
    np.testing.assert_allclose([r["loo"] for r in got.table], [r["loo"] for r in want.table],
                               rtol=1e-9)

    original = job.to_numpy()
    Path(store, "nngp", "c", "1", "0", "2", "1").unlink()  # b 0.5, depth 1, tile (2, 1)
    with pytest.raises(CorruptChunk, match=r"nngp chunk \[1, 0, 2, 1\]: missing"):
        read(kernel_array(g, "nngp", 1, b_std=0.5))
    rep = workers.verify_job(store, client=client)
    assert [(b["array"], b["chunk"]) for b in rep.bad] == [("nngp", [1, 0, 2, 1])]
    fixed = workers.compute_gram(CNTK, x, store=store, verify=True, **kw).wait()
    assert fixed.tiles_computed == 1
    for name, v in fixed.to_numpy().items():
        assert np.array_equal(v, original[name])


def test_selection_by_cg_on_a_validation_split(client, tmp_path, images):
    """``select_by_validation``: every (b_std, depth, kernel, λ) fit by distributed CG on
    the kept rows and scored on the held-out ones equals kernel ridge on those blocks of the
    in-process kernels (accuracy exactly, mse to 1e-6), and the best is the table's best."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((40, 5))
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    fam = make_family(FC, [1, 2], b_stds=[0.0, 1.0])
    job = workers.compute_gram(FC, x, store=str(tmp_path / "v"), tile=16, client=client,
                               depths=[1, 2], b_stds=[0.0, 1.0]).wait()
    grid = [1e-3, 1e-1]
    got = workers.select_by_validation(job.url, y, kinds=["ntk", "nngp"], lambdas=grid,
                                       validation=0.25, seed=3, tol=1e-10, client=client)
    assert got.criterion == "validation" and len(got.table) == 2 * 2 * 2 * 2
    from workers.solve import _validation_split

    held = _validation_split(y, 3, 0.25, 3)
    assert held.sum() == sum(round(0.25 * np.sum(y == c)) for c in range(3))
    k = kernel_family(fam, x)
    for row in got.table:
        K = k[row["kernel"]][fam.b_stds.index(row["b_std"]), fam.depths.index(row["depth"])]
        coef = kernel_ridge(K[~held][:, ~held], one_hot(y[~held], 3), K[held][:, ~held],
                            lam=row["lam"], relative=True)
        assert row["accuracy"] == np.mean(coef.argmax(1) == y[held]), row["name"]
        mse = np.mean((coef - one_hot(y[held], 3)) ** 2)
        assert abs(row["mse"] - mse) <= 1e-6 * mse and row["converged"]
    best = max(got.table, key=lambda r: (r["accuracy"], -r["mse"]))
    assert got.best == best
    for kwargs, field in (({"validation": 0.9}, "validation"), ({"variants": [1]}, "variants"),
                          ({"b_stds": [2.0]}, "b_stds")):
        with pytest.raises(InputError) as e:
            workers.select_by_validation(job.url, y, client=client, **kwargs)
        assert e.value.field == field
