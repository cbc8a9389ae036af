"""float32 against float64 kernels on real images (issue 15, "accurate reduced precision").

For each architecture x workload it computes the NNGP and NTK Gram matrices once in float32
and once in float64 (``ntkcompute.kernel``, one thread) and prints, per kernel:

* ``err``: max over (i, j) of ``|K32_ij - K64_ij| / sqrt(K64_ii K64_jj)`` (target <= 1e-6);
* ``lmin32``, ``lmin64``: ``λmin(K) / mean(diag K)`` of each (target: lmin32 >= -1e-7);
* ``lmin_fl``: the same for the float64 Gram of the float32-rounded inputs, rounded to float32:
  the best any float32 computation can deliver (``kernel`` casts the inputs to float32); a Gram
  singular to float32 precision has ``lmin_fl`` ~ -1e-7 already;
* ``spec``: ``‖K32 - K64‖₂ / mean(diag K64)``, which bounds how far any eigenvalue moved;
* ``t32``: CPU seconds (``time.process_time``) of the float32 call.

Workloads: the first n MNIST training images (28x28 and 2x2-averaged to 14x14) and CIFAR-10
training images (32x32 and 16x16) from ``../shared/data``, /255 then standardised per channel
with the subset's mean and std (Arora et al. 2019). ``+dup`` workloads append near-duplicates
of the first images, each with 16 pixels moved by one grey level (uint8 ±1); ``+noisy`` ones
copies with Gaussian noise of 4 grey levels on every pixel, rounded to uint8 (re-encoded
copies, as data sets contain: Barz & Denzler 2020 list near-duplicates in CIFAR). Both make
the true Gram nearly singular: the case where float32 noise decides definiteness.
Myrtle kernels need 32x32 inputs (five halvings); the fc rows take flattened pixels.

The script uses only ``ntkcompute.kernel`` and ``ntkcompute.architectures``, so it runs
unchanged against older code: ``PYTHONPATH=/path/to/old .venv/bin/python bench/precision.py``
(check the printed ``ntkcompute`` path). ``--save`` writes the rows as JSON; ``--before`` reads
such a file (from the old code) and ``--markdown`` writes a before/after table.

Run: ``.venv/bin/python bench/precision.py [--only SUBSTR] [--save out.json]
[--before before.json --markdown table.md]`` (~5 min CPU on one thread).
"""

from __future__ import annotations

import os

# process_time counts every thread: keep BLAS (the input covariances) on the one thread
# that ntkcompute.kernel(threads=1) uses. Must be set before NumPy loads BLAS.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import time
from pathlib import Path

import numpy as np

import ntkcompute as nc
from ntkcompute import architectures as A

#: ``../shared/data`` beside this checkout (not beside the imported ntkcompute, which may be
#: an old worktree elsewhere), or ``$NTKCOMPUTE_DATA``.
DATA = Path(os.environ.get("NTKCOMPUTE_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))
KERNELS = ("nngp", "ntk")


def images(name: str, n: int, dups: int = 0, kind: str = "dup", seed: int = 0) -> np.ndarray:
    """``(n + dups, H, W, C)`` standardised images of workload ``name`` ("mnist28", "mnist14",
    "cifar32", "cifar16"), the last ``dups`` copies of the first ``dups``: 16 pixels ±1 grey
    level (``kind="dup"``) or N(0, 4²) grey levels on every pixel (``"noisy"``)."""
    if name.startswith("mnist"):
        x = np.load(DATA / "mnist" / "mnist_train_first20000.npz")["x"][:n, ..., None]
    else:
        x = np.load(DATA / "cifar10" / "cifar10_train_first4000.npz")["x"][:n]
    rng = np.random.default_rng(seed)
    copies = x[:dups].astype(np.float64)
    if kind == "noisy":
        copies += rng.normal(0.0, 4.0, copies.shape)
    else:
        for img in copies:
            flat = img.reshape(-1)  # a view: edits img
            idx = rng.choice(flat.size, 16, replace=False)
            flat[idx] += rng.choice([-1.0, 1.0], 16)
    copies = np.clip(np.round(copies), 0, 255)
    x = np.concatenate([x, copies]) / 255.0
    size = int(name.removeprefix("mnist").removeprefix("cifar"))
    if size < x.shape[1]:  # 2x2 average
        f = x.shape[1] // size
        x = x.reshape(len(x), size, f, size, f, x.shape[-1]).mean(axis=(2, 4))
    axes = (0, 1, 2)
    return (x - x.mean(axis=axes)) / x.std(axis=axes)


def configs() -> list[tuple[str, dict, str, int, int, str]]:
    """``(architecture name, spec, workload, n, copies, copy kind)``; n sized so that the run
    takes ~4 CPU minutes (the full spatial covariance of GAP and pooling nets costs P² per
    pair, 1e6 floats at 32x32)."""
    gap3, gap8, v3, v8 = A.cntk(3), A.cntk(8), A.cntk(3, "flatten"), A.cntk(8, "flatten")
    res = A.resnet(2, "global_avg_pool")
    out: list[tuple[str, dict, str, int, int, str]] = []
    for wl, big in (("mnist28", True), ("mnist14", False), ("cifar32", True),
                    ("cifar16", False)):
        out += [
            ("cntk-gap-3", gap3, wl, 10 if big else 32, 0, ""),
            ("cntk-gap-8", gap8, wl, 6 if big else 20, 0, ""),
            ("cntk-v-3", v3, wl, 96, 0, ""),
            ("cntk-v-8", v8, wl, 64 if big else 96, 0, ""),
            ("resnet-2-gap", res, wl, 6 if big else 20, 0, ""),
            ("fc-3", A.fc(3), wl, 512, 0, ""),
        ]
        if wl == "cifar32":
            out += [("myrtle-5", A.myrtle(5), wl, 10, 0, ""),
                    ("myrtle-7", A.myrtle(7), wl, 10, 0, "")]
    for wl in ("mnist14", "cifar16"):
        for kind in ("dup", "noisy"):
            out += [("cntk-gap-3", gap3, wl, 16, 8, kind), ("cntk-v-8", v8, wl, 32, 16, kind)]
    return out


def lmin(k: np.ndarray) -> float:
    k = k.astype(np.float64)
    return float(np.linalg.eigvalsh(k)[0] / np.mean(np.diag(k)))


def measure(spec: dict, x: np.ndarray) -> dict:
    """The row's numbers for both kernels; ``x`` as (n, H, W, C) or flattened for fc."""
    t = time.process_time()
    k32 = nc.kernel(spec, x, dtype=np.float32, threads=1)
    t32 = time.process_time() - t
    k64 = nc.kernel(spec, x, dtype=np.float64, threads=1)
    rounded = nc.kernel(spec, x.astype(np.float32).astype(np.float64), dtype=np.float64,
                        threads=1)
    row: dict = {"t32": t32}
    for g in KERNELS:
        a, b = np.asarray(k32[g], dtype=np.float64), np.asarray(k64[g])
        d = np.sqrt(np.diag(b))
        mean_diag = float(np.mean(np.diag(b)))
        row[g] = {
            "err": float(np.max(np.abs(a - b) / np.outer(d, d))),
            "lmin32": lmin(a), "lmin64": lmin(b),
            "lmin_fl": lmin(np.asarray(rounded[g]).astype(np.float32)),
            "spec": float(np.linalg.norm(a - b, 2) / mean_diag),
        }
    return row


def label(row: dict) -> str:
    """The workload as printed: ``cifar16``, ``cifar16+8dup``, ``cifar16+8noisy``."""
    return row["workload"] + (f"+{row['dups']}{row['kind']}" if row["dups"] else "")


def key(row: dict) -> str:
    return f"{row['arch']} {label(row)} n={row['n']}"


def markdown(after: list[dict], before: dict[str, dict] | None) -> str:
    """One line per (row, kernel): float32 error and definiteness, before -> after, and the
    float32 CPU time."""
    def pair(b: dict | None, a: dict, g: str, f: str) -> str:
        return f"{b[g][f]:.1e} → {a[g][f]:.1e}" if b else f"{a[g][f]:.1e}"

    head = ("| architecture | workload | n | kernel | err (≤ 1e-6) | λmin32/diag (≥ -1e-7) "
            "| λmin64/diag | λmin floor | ‖ΔK‖₂/diag | float32 CPU s |")
    lines = [head, "|" + "---|" * 10]
    t_before = t_after = 0.0
    for a in after:
        b = (before or {}).get(key(a))
        t = f"{b['t32']:.2f} → {a['t32']:.2f}" if b else f"{a['t32']:.2f}"
        if b:
            t_before, t_after = t_before + b["t32"], t_after + a["t32"]
        for g in KERNELS:
            lines.append(
                f"| {a['arch']} | {label(a)} | {a['n'] + a['dups']} | {g} "
                f"| {pair(b, a, g, 'err')} | {pair(b, a, g, 'lmin32')} | {a[g]['lmin64']:.1e} "
                f"| {a[g]['lmin_fl']:.1e} | {pair(b, a, g, 'spec')} | {t} |")
    if t_before:
        lines.append(f"\nfloat32 CPU seconds, all rows: {t_before:.1f} before, {t_after:.1f} "
                     f"after ({t_after / t_before:.2f}x).")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=None, help="substring of 'arch workload[+Nkind]'")
    ap.add_argument("--save", default=None, help="write the rows as JSON here")
    ap.add_argument("--before", default=None, help="JSON rows of an earlier run (old code)")
    ap.add_argument("--markdown", default=None, help="write a (before ->) after table here")
    args = ap.parse_args()
    print(f"ntkcompute={Path(nc.__file__).parent}  numpy={np.__version__}  data={DATA}")
    print(f"{'architecture':13s} {'workload':16s} {'n':>4s} {'kernel':6s} {'err':>8s} "
          f"{'lmin32':>9s} {'lmin64':>9s} {'lmin_fl':>9s} {'spec':>8s} {'t32 s':>6s}")
    rows = []
    t0 = time.process_time()
    for name, spec, wl, n, dups, kind in configs():
        row = {"arch": name, "workload": wl, "n": n, "dups": dups, "kind": kind}
        if args.only and args.only not in f"{name} {label(row)}":
            continue
        x = images(wl, n, dups, kind)
        if name.startswith("fc"):
            x = x.reshape(len(x), -1)
        row.update(measure(spec, x))
        rows.append(row)
        for g in KERNELS:
            r = row[g]
            print(f"{name:13s} {label(row):16s} {n + dups:4d} {g:6s} {r['err']:8.1e} "
                  f"{r['lmin32']:9.1e} {r['lmin64']:9.1e} {r['lmin_fl']:9.1e} {r['spec']:8.1e} "
                  f"{row['t32']:6.2f}", flush=True)
    print(f"total CPU {time.process_time() - t0:.0f} s")
    if args.save:
        Path(args.save).write_text(json.dumps(rows, indent=1))
    if args.markdown:
        before = None
        if args.before:
            before = {key(r): r for r in json.loads(Path(args.before).read_text())}
        Path(args.markdown).write_text(markdown(rows, before))


if __name__ == "__main__":
    main()
