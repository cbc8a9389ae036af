"""What per-chunk CRC-32C checksums cost, against the same work without them, in one run.

Three parts, every ratio against a baseline measured in the same run on the same machine:

1. Gram jobs: ``workers.compute_gram(..., checksums=True)`` against ``checksums=False`` (the
   same job, same tile, written without the ``crc32c`` codec), a fresh store per run, the
   two paths alternated ``--reps`` times after a warm-up of each, on one embedded
   LocalCluster of 2 single-threaded worker processes. An FC job (cheap kernel: I/O and the
   CRC weigh most) in float32 and float64, and a CNTK job on 8x8x1 digits (compute-bound).
   Prints wall seconds per run, median checked / median unchecked, the per-pair ratios,
   the CPU seconds (workers + driver) ratio, and the target.
2. Block reads, in-process on the FC stores of the last pair: the whole n x n ``ntk`` and an
   unaligned ``--sub`` x ``--sub`` block, four ways: plain ``arr[...]`` of the unchecked
   store (the old path, the baseline), plain ``arr[...]`` of the checked store (CRC only),
   ``workers.store.read`` of the unchecked store (NaN-fill check only) and of the checked
   store (both: the path every read takes now). Median wall and driver CPU
   (``time.process_time``) over ``--read-reps`` rotated repetitions.
3. ``workers.verify_job`` on the FC stores (checked, and unchecked as a NaN-only baseline):
   median seconds and MB/s of kernel data checked.

Correctness: every array of each checked store is bit-identical (``np.array_equal``) to the
same array of its unchecked twin, and only the checked store carries the codec.

Run: ``.venv/bin/python bench/integrity.py [--reps 3] [--fc-n 3000] ...`` (``--help``).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import google_crc32c
import numpy as np
import zarr
from distributed import Client

import workers
from ntkcompute import architectures as A
from ntkcompute.datasets import digits
from workers.cluster import get_client, shutdown
from workers.store import has_checksums, open_group, read

PATHS = ("unchecked", "checked")


@dataclass
class Case:
    """One Gram job configuration of part 1."""

    name: str
    arch: dict[str, Any]
    x: np.ndarray
    tile: int
    dtype: str
    target: float
    keep: bool  # keep the last pair's stores for parts 2 and 3
    secs: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PATHS})
    cpu: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PATHS})
    tiles: int = 0
    stores: dict[str, str] = field(default_factory=dict)


def _cpu(client: Client) -> float:
    """CPU seconds used so far by every worker process plus this (driver) process."""
    return sum(client.run(time.process_time).values()) + time.process_time()


def run_job(client: Client, case: Case, store: str, checksums: bool) -> tuple[float, float]:
    """Run the case's Gram job into a fresh ``store``; ``(wall s, CPU s)``."""
    shutil.rmtree(store, ignore_errors=True)
    c0 = _cpu(client)
    t = time.perf_counter()
    job = workers.compute_gram(case.arch, case.x, store=store, tile=case.tile,
                               dtype=case.dtype, client=client, checksums=checksums).wait()
    sec = time.perf_counter() - t
    case.tiles = job.tiles_total
    return sec, _cpu(client) - c0


def _arrays(g: zarr.Group, prefix: str = "") -> dict[str, zarr.Array]:
    """Every array under ``g``, by path."""
    out: dict[str, zarr.Array] = {}
    for name, arr in g.arrays():
        out[prefix + name] = arr
    for name, sub in g.groups():
        out.update(_arrays(sub, f"{prefix}{name}/"))
    return out


def check_identical(checked: str, unchecked: str) -> int:
    """Assert that the two stores hold the same arrays, bit for bit, and that only the
    checked one carries CRCs; return the number of arrays compared."""
    a = _arrays(open_group(checked, mode="r"))
    b = _arrays(open_group(unchecked, mode="r"))
    assert a.keys() == b.keys(), f"array sets differ: {sorted(a.keys() ^ b.keys())}"
    for name in a:
        assert has_checksums(a[name]) and not has_checksums(b[name]), f"{name}: codecs"
        ok = a[name].dtype.kind != "f"  # markers: absent chunks read 0 in both
        assert np.array_equal(read(a[name], missing_ok=ok), b[name][...]), f"{name} differs"
    return len(a)


def part_jobs(client: Client, cases: list[Case], reps: int, warmup: int, root: str) -> None:
    print("\n1. Gram jobs, checked (CRC-32C per chunk) vs unchecked; fresh store per run, "
          "alternating")
    print(f"{'config':26s} {'dtype':7s} {'n':>5s} {'tile':>4s} {'tiles':>5s} {'MB':>5s} "
          f"{'unchecked s':>18s} {'checked s':>18s} {'ratio':>6s} {'target':>7s} "
          f"{'cpu ratio':>9s}  pairwise")
    for c, case in enumerate(cases):
        for _ in range(warmup):
            for path in PATHS:
                run_job(client, case, f"{root}/warm-{c}-{path}", path == "checked")
                shutil.rmtree(f"{root}/warm-{c}-{path}", ignore_errors=True)
        compared = 0
        for r in range(reps):
            order = PATHS if r % 2 == 0 else PATHS[::-1]
            stores = {p: f"{root}/{c}-{p}-{r}" for p in PATHS}
            for path in order:
                sec, cpu = run_job(client, case, stores[path], path == "checked")
                case.secs[path].append(sec)
                case.cpu[path].append(cpu)
            compared = check_identical(stores["checked"], stores["unchecked"])
            if case.keep and r == reps - 1:
                case.stores = stores
            else:
                for s in stores.values():
                    shutil.rmtree(s, ignore_errors=True)
        med = {p: statistics.median(case.secs[p]) for p in PATHS}
        ratio = med["checked"] / med["unchecked"]
        cpu_ratio = (statistics.median(case.cpu["checked"])
                     / statistics.median(case.cpu["unchecked"]))
        pairs = [a / b for a, b in zip(case.secs["checked"], case.secs["unchecked"],
                                       strict=True)]
        n = len(case.x)
        mb = 2 * n * n * np.dtype(case.dtype).itemsize / 1e6  # ntk + nngp
        verdict = "ok" if ratio <= case.target else "OVER"
        print(f"{case.name:26s} {case.dtype:7s} {n:5d} {case.tile:4d} {case.tiles:5d} "
              f"{mb:5.0f} {' '.join(f'{s:5.2f}' for s in case.secs['unchecked']):>18s} "
              f"{' '.join(f'{s:5.2f}' for s in case.secs['checked']):>18s} {ratio:6.3f} "
              f"{'<=' + format(case.target, '.2f'):>7s} {cpu_ratio:9.3f}  "
              f"{', '.join(f'{p:.3f}' for p in pairs)}  {verdict}", flush=True)
        print(f"{'':26s} bit-identical: {compared} arrays of each pair; CPU s median "
              f"unchecked {statistics.median(case.cpu['unchecked']):.2f}, checked "
              f"{statistics.median(case.cpu['checked']):.2f} (2 workers + driver)")
    print("ratio: median checked s / median unchecked s; pairwise: checked / unchecked of "
          "each repetition; MB: kernel data written (ntk + nngp)")


def _plain(arr: zarr.Array, sel: tuple[slice, ...]) -> np.ndarray:
    """The old, unverified read."""
    return arr[sel]


def _time(fn: Callable[[], np.ndarray]) -> tuple[float, float]:
    c, t = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def part_reads(cases: list[Case], reps: int, sub: int) -> None:
    print(f"\n2. In-process block reads of ntk (median of {reps}, rotated order; wall ms / "
          "driver CPU ms)")
    print(f"{'store':18s} {'block':>16s} {'MB':>5s} {'chunks':>6s} {'plain unchk':>13s} "
          f"{'plain chk':>13s} {'read unchk':>13s} {'read chk':>13s} {'read chk/old':>14s} "
          f"{'NaN share':>11s} {'CRC share':>11s} {'GB/s':>5s}")
    for case in cases:
        if not case.stores:
            continue
        arr = {p: open_group(case.stores[p], mode="r")["ntk"] for p in PATHS}
        n, tile = arr["checked"].shape[0], arr["checked"].chunks[0]
        off = tile // 2  # unaligned: the block touches partial chunks on every side
        s = min(sub, n - off)
        blocks = [(f"{n}x{n} whole", (slice(0, n), slice(0, n))),
                  (f"{s}x{s} @{off}", (slice(off, off + s), slice(off, off + s)))]
        for label, sel in blocks:
            ways: dict[str, Callable[[], np.ndarray]] = {
                "plain unchk": partial(_plain, arr["unchecked"], sel),  # the old path
                "plain chk": partial(_plain, arr["checked"], sel),
                "read unchk": partial(read, arr["unchecked"], sel),
                "read chk": partial(read, arr["checked"], sel),
            }
            names = list(ways)
            assert np.array_equal(ways["read chk"](), ways["plain unchk"]())  # warm-up too
            for name in names:
                ways[name]()
            wall: dict[str, list[float]] = {k: [] for k in names}
            cpu: dict[str, list[float]] = {k: [] for k in names}
            for r in range(reps):
                for name in names[r % 4:] + names[:r % 4]:
                    w, c = _time(ways[name])
                    wall[name].append(w)
                    cpu[name].append(c)
            chunks = len(range(sel[0].start // tile, -(-sel[0].stop // tile))) ** 2
            mb = s * s * arr["checked"].dtype.itemsize / 1e6 if "@" in label else \
                n * n * arr["checked"].dtype.itemsize / 1e6
            for kind, data in (("wall", wall), ("cpu", cpu)):
                m = {k: statistics.median(v) * 1e3 for k, v in data.items()}
                base = m["plain unchk"]
                head = (f"{case.dtype + ' ' + kind:18s} {label:>16s} {mb:5.1f} {chunks:6d}"
                        if kind == "wall" else f"{'  cpu':18s} {'':>16s} {'':5s} {'':6s}")
                gbs = f"{mb / m['read chk']:5.2f}" if kind == "wall" else f"{'':5s}"
                print(f"{head} {m['plain unchk']:13.1f} {m['plain chk']:13.1f} "
                      f"{m['read unchk']:13.1f} {m['read chk']:13.1f} "
                      f"{m['read chk'] / base:14.3f} {(m['read unchk'] - base) / base:+11.1%} "
                      f"{(m['read chk'] - m['read unchk']) / base:+11.1%} {gbs}", flush=True)
    print("old: plain arr[...] of the unchecked store; read chk/old: workers.store.read of "
          "the checked store / old;\nNaN share: (read unchk - old) / old; CRC share: "
          "(read chk - read unchk) / old; GB/s: MB requested / read chk wall")


def part_verify(client: Client, cases: list[Case], reps: int) -> None:
    print(f"\n3. verify_job on the FC stores (2 workers, median of {reps})")
    print(f"{'store':22s} {'chunks':>6s} {'kernel MB':>9s} {'seconds':>24s} {'median':>7s} "
          f"{'MB/s':>7s}")
    for case in cases:
        if not case.stores:
            continue
        for path in ("checked", "unchecked"):
            secs, checked = [], 0
            for _ in range(reps):
                t = time.perf_counter()
                report = workers.verify_job(case.stores[path], client=client)
                secs.append(time.perf_counter() - t)
                assert report.ok, report.to_dict()
                checked = report.checked
            g = open_group(case.stores[path], mode="r")
            mb = sum(g[k].nbytes for k in ("ntk", "nngp") if k in g) / 1e6
            med = statistics.median(secs)
            print(f"{case.dtype + ' ' + path:22s} {checked:6d} {mb:9.0f} "
                  f"{' '.join(f'{s:5.2f}' for s in secs):>24s} {med:7.2f} {mb / med:7.0f}",
                  flush=True)
    print("MB/s: ntk + nngp bytes (every chunk, both mirrors) / median seconds; chunks: "
          "all chunks read (inputs, self statistics, markers, kernels); unchecked: the "
          "same walk with no CRC to verify (NaN/key checks only)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="runs of each path per Gram job")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs of each path first")
    ap.add_argument("--fc-n", type=int, default=3000)
    ap.add_argument("--fc-d", type=int, default=64)
    ap.add_argument("--fc-depth", type=int, default=3)
    ap.add_argument("--fc-tile", type=int, default=375)
    ap.add_argument("--fc-dtypes", default="float32,float64")
    ap.add_argument("--cntk-n", type=int, default=144, help="digits images (8x8x1)")
    ap.add_argument("--cntk-depth", type=int, default=3)
    ap.add_argument("--cntk-tile", type=int, default=24)
    ap.add_argument("--sub", type=int, default=1000, help="side of the sub-block read")
    ap.add_argument("--read-reps", type=int, default=7)
    ap.add_argument("--verify-reps", type=int, default=3)
    ap.add_argument("--root", default=None, help="directory for the stores (default: tmp)")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    x_fc = rng.standard_normal((args.fc_n, args.fc_d))
    cases = [Case(f"FC ReLU depth {args.fc_depth}, d={args.fc_d}", A.fc(args.fc_depth), x_fc,
                  args.fc_tile, dt, 1.15, True) for dt in args.fc_dtypes.split(",")]
    cases.append(Case(f"CNTK-GAP {args.cntk_depth}, 8x8x1", A.cntk(args.cntk_depth),
                      digits()[0][:args.cntk_n], args.cntk_tile, "float64", 1.03, False))

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    print(f"machine: {os.cpu_count()} cores ({affinity} usable), load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}, {platform.python_version()}, "
          f"numpy {np.__version__}, zarr {zarr.__version__}, google_crc32c "
          f"{google_crc32c.implementation}")
    print(f"config: reps {args.reps} (+{args.warmup} warm-up) per path; FC depth "
          f"{args.fc_depth} n={args.fc_n} d={args.fc_d} tile {args.fc_tile} "
          f"{args.fc_dtypes}; CNTK-GAP depth {args.cntk_depth} n={args.cntk_n} tile "
          f"{args.cntk_tile} float64; sub-block {args.sub}; read reps {args.read_reps}; "
          f"verify reps {args.verify_reps}; LocalCluster 2 workers x 1 thread (TLS)")
    root = tempfile.mkdtemp(prefix="ntkbench-crc-", dir=args.root)
    print(f"stores under {root}", flush=True)
    t0 = time.perf_counter()
    c = time.perf_counter()
    client, cluster = get_client(n_workers=2, reuse_default=False)
    assert cluster is not None
    try:
        client.wait_for_workers(2)
        client.run(lambda: None)
        print(f"cluster up in {time.perf_counter() - c:.1f} s", flush=True)
        part_jobs(client, cases, args.reps, args.warmup, root)
        part_reads(cases, args.read_reps, args.sub)
        part_verify(client, cases, args.verify_reps)
    finally:
        shutdown(client, cluster)
        shutil.rmtree(root, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s, load average now "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
