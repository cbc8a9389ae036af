"""Cost of a kernel family (every depth from one pass) against separate kernels.

For each architecture: the family of depths 1..D computed by ``kernel_family`` in one pass,
its deepest member alone (``ntkcompute.kernel``), and the D members computed one by one; CPU
time of one thread (``process_time``, BLAS on one thread; the least of three warm runs), so
the ratios hold on a shared machine. Also checks that every member equals its separate kernel.

    python bench/families.py [--n 48] [--depth 5] [--dask | --variants | --grid]

``--variants``: the family with variants 0..D-1 too (the first v blocks fixed: Arora et al.
2020's "fixed bottom layers", L' < L), against the family without variants, the deepest
member alone, and the D(D+1)/2 networks with L' < L computed one by one (each a spec with
``trainable: false`` layers).

``--grid``: the whole search of issue 19's protocol in one family, variants 0..D-1 and the
bias grid b_std in {0, 1} (``b_stds``: one pass per value over shared inputs), against the
two variant families of one b_std each and the 2 D(D+1)/2 networks one by one.

``--dask``: the same comparison as tiled jobs on one Dask worker process (one thread,
``workers.compute_gram`` into Zarr under a temporary directory, tiles of n/2 rows): the
family job (``depths=``), the deepest member's job, and one job per member; CPU time of
the worker process (``time.process_time`` there, before and after each job: every tile
task, the Zarr writes and checksums included), the least of three runs.

Inputs: the first CIFAR-10 training images of ``../shared/data`` at 16x16 (2x2 mean),
standardised per channel (n for CNTK-GAP, 8n for CNTK-V, 32n flattened for FC).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import functools
import time

import numpy as np

import ntkcompute as nc
from ntkcompute.datasets import cifar10
from ntkcompute.families import kernel_family, make_family

CONV = {"type": "conv", "filter_shape": [3, 3], "padding": "SAME", "W_std": 2 ** 0.5}
#: name -> (body, head, inputs as a multiple of --n: the cheap kernels get more rows)
FAMILIES = {
    "CNTK-GAP": ([CONV, {"type": "relu"}], [{"type": "global_avg_pool"}, {"type": "dense"}],
                 1),
    "CNTK-V": ([CONV, {"type": "relu"}], [{"type": "flatten"}, {"type": "dense"}], 8),
    "FC": ([{"type": "dense", "W_std": 2 ** 0.5, "b_std": 0.1}, {"type": "relu"}],
           [{"type": "dense"}], 32),
}


def _cpu(fn, repeat: int = 3):
    """``fn()`` and its least CPU time over ``repeat`` runs (the first run also compiles
    the fused kernels, so every timed run is warm)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t)
    return out, best


def _separately(members, data):
    return [nc.kernel(m, data, threads=1) for m in members]


def _worker_cpu() -> float:
    return time.process_time()


def _dask_timer(tmp: str):
    """``run(label, arch, data, depths)``: the least worker CPU seconds of three runs of a
    tiled job (a new store each run: nothing reused)."""
    from workers import compute_gram
    from workers.cluster import get_client

    client, cluster = get_client(n_workers=1, reuse_default=False)
    count = iter(range(10**6))

    def run(arch, data, depths=None):
        best, job = float("inf"), None
        for _ in range(3):
            before = sum(client.run(_worker_cpu).values())
            job = compute_gram(arch, data, store=f"{tmp}/{next(count)}", client=client,
                               tile=-(-len(data) // 2), depths=depths).wait()
            best = min(best, sum(client.run(_worker_cpu).values()) - before)
        return job, best

    return run, lambda: (client.close(), cluster.close())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--dask", action="store_true")
    ap.add_argument("--variants", action="store_true")
    ap.add_argument("--grid", action="store_true")
    args = ap.parse_args()
    if args.dask:
        return _main_dask(args)
    if args.variants:
        return _main_variants(args)
    if args.grid:
        return _main_grid(args)
    x = _inputs(args)
    depths = list(range(1, args.depth + 1))
    print(f"{'family':10s} {'n':>4s} {'D':>2s} {'family s':>9s} {'deepest s':>10s} "
          f"{'separate s':>11s} {'fam/deepest':>12s} {'separate/fam':>13s} {'max diff':>9s}")
    for name, data, arch in _cases(args, x):
        fam = make_family(arch, depths)
        k, t_fam = _cpu(functools.partial(kernel_family, fam, data, threads=1))
        refs, t_sep = _cpu(functools.partial(_separately, fam.members, data))
        _, t_deep = _cpu(functools.partial(nc.kernel, fam.members[-1], data, threads=1))
        diff = max(float(np.abs(k[g][i] - r[g]).max() / np.abs(r[g]).max())
                   for i, r in enumerate(refs) for g in ("ntk", "nngp"))
        print(f"{name:10s} {len(data):4d} {len(depths):2d} {t_fam:9.2f} {t_deep:10.2f} "
              f"{t_sep:11.2f} {t_fam / t_deep:11.2f}x {t_sep / t_fam:12.2f}x {diff:9.1e}",
              flush=True)


def _main_variants(args) -> None:
    x = _inputs(args)
    depths = list(range(1, args.depth + 1))
    variants = list(range(args.depth))
    print(f"{'family':10s} {'n':>4s} {'kernels':>7s} {'variants s':>10s} {'depths s':>9s} "
          f"{'deepest s':>10s} {'separate s':>11s} {'var/depths':>11s} {'var/deepest':>12s} "
          f"{'separate/var':>13s} {'max diff':>9s}")
    for name, data, arch in _cases(args, x):
        fam = make_family(arch, depths, variants)
        grid = [(i, j) for i, d in enumerate(depths) for j, v in enumerate(variants) if v < d]
        k, t_var = _cpu(functools.partial(kernel_family, fam, data, threads=1))
        _, t_fam = _cpu(functools.partial(kernel_family, arch, data, depths=depths, threads=1))
        refs, t_sep = _cpu(functools.partial(
            _separately, [fam.member(depths[i], variants[j]) for i, j in grid], data))
        _, t_deep = _cpu(functools.partial(nc.kernel, fam.member(depths[-1]), data,
                                           threads=1))
        diff = max(float(np.abs(k["ntk"][i, j] - r["ntk"]).max() / np.abs(r["ntk"]).max())
                   for (i, j), r in zip(grid, refs, strict=True))
        print(f"{name:10s} {len(data):4d} {len(grid):7d} {t_var:10.2f} {t_fam:9.2f} "
              f"{t_deep:10.2f} {t_sep:11.2f} {t_var / t_fam:10.2f}x {t_var / t_deep:11.2f}x "
              f"{t_sep / t_var:12.2f}x {diff:9.1e}", flush=True)


def _main_grid(args) -> None:
    x = _inputs(args)
    depths, variants, biases = list(range(1, args.depth + 1)), list(range(args.depth)), [0, 1]
    print(f"{'family':10s} {'n':>4s} {'networks':>8s} {'grid s':>7s} {'2 families s':>13s} "
          f"{'separate s':>11s} {'separate/grid':>14s} {'max diff':>9s}")
    for name, data, arch in _cases(args, x):  # (the grid sets every b_std)
        fam = make_family(arch, depths, variants, biases)
        grid = [(k, i, j) for k in range(len(biases)) for i, d in enumerate(depths)
                for j, v in enumerate(variants) if v < d]
        k, t_grid = _cpu(functools.partial(kernel_family, fam, data, threads=1))
        _, t_two = _cpu(lambda data=data, fam=fam: [
            kernel_family(fam.biased(b), data, threads=1) for b in biases])
        refs, t_sep = _cpu(functools.partial(_separately, [
            fam.member(depths[i], variants[j], biases[b]) for b, i, j in grid], data))
        diff = max(float(np.abs(k["ntk"][b, i, j] - r["ntk"]).max() / np.abs(r["ntk"]).max())
                   for (b, i, j), r in zip(grid, refs, strict=True))
        print(f"{name:10s} {len(data):4d} {len(grid):8d} {t_grid:7.2f} {t_two:13.2f} "
              f"{t_sep:11.2f} {t_sep / t_grid:13.2f}x {diff:9.1e}", flush=True)


def _cases(args, x: np.ndarray):
    """``(name, inputs, family spec)`` of each architecture of :data:`FAMILIES`."""
    for name, (body, head, times) in FAMILIES.items():
        data = x[:args.n * times]
        data = data.reshape(len(data), -1) if name == "FC" else data
        yield name, data, {"layers": [{"type": "repeat", "n": 1, "layer": {
            "type": "serial", "layers": body}}, *head]}


def _inputs(args) -> np.ndarray:
    n_all = args.n * max(m for *_, m in FAMILIES.values())
    x, _ = cifar10(n_all)
    x = x.reshape(len(x), 16, 2, 16, 2, 3).mean(axis=(2, 4))
    return (x - x.mean(axis=(0, 1, 2))) / x.std(axis=(0, 1, 2))


def _main_dask(args) -> None:
    import tempfile

    x = _inputs(args)
    depths = list(range(1, args.depth + 1))
    print("tiled jobs on one Dask worker (worker CPU seconds, least of 3)")
    print(f"{'family':10s} {'n':>4s} {'D':>2s} {'family s':>9s} {'deepest s':>10s} "
          f"{'separate s':>11s} {'fam/deepest':>12s} {'separate/fam':>13s} {'max diff':>9s}")
    with tempfile.TemporaryDirectory() as tmp:
        run, close = _dask_timer(tmp)
        try:
            for name, data, arch in _cases(args, x):
                fam = make_family(arch, depths)
                job, t_fam = run(arch, data, depths)
                _, t_deep = run(fam.members[-1], data)
                t_sep, diff = 0.0, 0.0
                for d, m in zip(depths, fam.members, strict=True):
                    one, t = run(m, data)
                    t_sep += t
                    got, want = job.member(d), one.to_numpy()
                    diff = max(diff, *(float(np.abs(got[g] - want[g]).max()
                                             / np.abs(want[g]).max()) for g in want))
                print(f"{name:10s} {len(data):4d} {len(depths):2d} {t_fam:9.2f} "
                      f"{t_deep:10.2f} {t_sep:11.2f} {t_fam / t_deep:11.2f}x "
                      f"{t_sep / t_fam:12.2f}x {diff:9.1e}", flush=True)
        finally:
            close()


if __name__ == "__main__":
    main()
