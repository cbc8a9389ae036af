"""The two kinds of kernel job behind one protocol: ``exact`` (tiled Gram matrices) and
``features`` (random features, whose kernel block is ``Φ Φ'ᵀ``).

The service and its runner hold no branch on the method: they look the kind up with
:func:`kind_of` and call plan (at submit), start (on a worker pool), read_block, coefficient
rows, check_solve and solve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ntkcompute.errors import InputError
from ntkcompute.lifecycle import Status
from ntkcompute.preprocess import check_preprocess
from ntkcompute.validate import check_get

from ..features import compute_features, plan_features, solve_features
from ..gram import GramJob, compute_gram, plan_job, read_marks
from ..solve import SolveResult, select_by_validation, select_member
from ..solve import solve as solve_exact
from ..store import CorruptChunk, kernel_array, open_group, read
from ..verify import verify_job
from .errors import JobConflict, NotStored, PartDamaged
from .layout import part_url, parts_of


@dataclass(frozen=True)
class Shape:
    """An input as planning sees it: its shape and dtype (a dataset's record), no data."""

    shape: tuple[int, ...]
    dtype: np.dtype


@dataclass(frozen=True)
class Planned:
    """A checked job as it is recorded: the architecture (JSON), kernels, dtype, tile rows."""

    arch: dict[str, Any]
    kernels: list[str]
    dtype: str
    tile: int
    depths: list[int] | None = None
    variants: list[int] | None = None
    b_stds: list[float] | None = None
    preprocess: dict[str, Any] | None = None


@dataclass(frozen=True)
class JobSpec:
    """What a kernel job runs: its store URL, its inputs' dataset URLs (None where unknown or
    deleted: a job keeps its own copy of its inputs, so only a start needs them) and its
    recorded plan."""

    url: str
    method: str
    train: str | None
    test: str | None
    has_test: bool
    n_train: int
    arch: dict[str, Any]
    kernels: tuple[str, ...]
    dtype: str
    tile: int
    m: int | None = None
    seed: int = 0
    depths: tuple[int, ...] | None = None  # a family job's members
    variants: tuple[int, ...] | None = None  # and its NTK's fixed-bottom-block variants
    b_stds: tuple[float, ...] | None = None  # and its bias grid
    preprocess: dict[str, Any] | None = None  # input transforms fit on the train rows

    @property
    def kind(self) -> JobKind:
        return kind_of(self.method)

    @property
    def parts(self) -> dict[str, str]:
        return parts_of(self.url, self.has_test)

    def inputs(self) -> tuple[str, str | None]:
        """The datasets a start reads: ``(train URL, test URL or None)``."""
        if self.train is None or (self.has_test and self.test is None):
            raise InputError("a dataset of this job was deleted", field="train")
        return self.train, self.test


class JobKind(Protocol):
    """A kind of kernel job."""

    name: str

    def plan(self, arch: Any, x1: Any, x2: Any | None, *, kernels: tuple[str, ...],
             dtype: Any, tile: int | None, memory: int, m: int | None = None,
             seed: int = 0, depths: list[int] | None = None,
             variants: list[int] | None = None,
             b_stds: list[float] | None = None,
             preprocess: dict[str, Any] | None = None) -> Planned:
        """Check the job before anything is written (``x1``/``x2`` need shape and dtype);
        :class:`InputError` naming the field. ``depths``: a family job; ``variants``: its
        NTK with the bottom blocks fixed too; ``b_stds``: for each value of the bias;
        ``preprocess``: input transforms fit on the train rows."""

    def start(self, job: JobSpec, parts: dict[str, GramJob], *, client: Any, memory: int,
              verify: bool) -> None:
        """Start (or resume) every part into ``parts`` (filled as each starts, so after a
        failure it holds the parts already running); ``verify``: recompute exactly the
        damaged chunks."""

    def read_block(self, job: JobSpec, kind: str, part: str, rows: str | None,
                   cols: str | None, *, status: str, max_bytes: int,
                   depth: int | None = None, variant: int | None = None,
                   b_std: float | None = None) -> np.ndarray:
        """The kernel block ``K_part[rows, cols]`` (cols index train rows); ``depth`` (and
        ``variant``, ``b_std``): the member of a family job."""

    def coefficient_rows(self, job: JobSpec, kind: str) -> int:
        """Rows of one λ's solution: n dual coefficients, or D feature weights."""

    def check_solve(self, job: JobSpec, request: dict[str, Any]) -> None:
        """:class:`InputError` naming the field for what of a solve ``request`` (its JSON)
        this kind cannot do on ``job``: analyses it cannot make, a member it does not
        have, a selection it cannot run."""

    def solve(self, job: JobSpec, labels: np.ndarray, test_labels: np.ndarray | None,
              params: dict[str, Any], *, client: Any) -> list[SolveResult]:
        """Kernel regression for every λ of ``params`` (a stored solve request)."""


def span(text: str | None, n: int, field: str) -> slice:
    """``"a:b"`` (either end may be empty; None or "" is all) as a slice of ``range(n)``."""
    if text is None or text == "":
        return slice(0, n)
    a, sep, b = text.partition(":")
    try:
        start = int(a) if a.strip() else 0
        stop = int(b) if b.strip() else n
    except ValueError:
        raise InputError(f"must be 'a:b' with integers, got {text!r}", field=field) from None
    if not sep or not 0 <= start < stop <= n:
        raise InputError(f"must be 'a:b' with 0 <= a < b <= {n}, got {text!r}", field=field)
    return slice(start, stop)


def _open(url: str, status: str) -> Any:
    try:
        return open_group(url, mode="r")
    except (FileNotFoundError, KeyError):
        raise NotStored(status) from None


def _arrays(g: Any, status: str, *names: str) -> list[Any]:
    try:
        return [g[n] for n in names]
    except KeyError:
        raise NotStored(status) from None


def _check_bytes(r: slice, c: slice, itemsize: int, max_bytes: int) -> None:
    nbytes = (r.stop - r.start) * (c.stop - c.start) * itemsize
    if nbytes > max_bytes:
        raise InputError(f"block of {nbytes} bytes exceeds the limit of {max_bytes}; ask for "
                         "fewer rows/cols", field="rows")


def _tiles(tile: int, *spans: slice) -> tuple[slice, ...]:
    return tuple(slice(s.start // tile, math.ceil(s.stop / tile)) for s in spans)


def _check_marks(done: Any, tiles: tuple[slice, ...], part: str, status: str) -> None:
    """Every tile under a block must be marked done; in a finished job one that is not is
    damage (its marker was lost), else the block is not computed yet."""
    marks = read_marks(done, tiles)
    if np.all(marks):
        return
    first = tuple(int(a + s.start) for a, s in zip(np.argwhere(~marks)[0], tiles,
                                                     strict=True))
    if status == Status.SUCCEEDED:
        raise PartDamaged(part, CorruptChunk("done", first, "marker lost (the tile may be "
                                             "gone too)"))
    raise JobConflict("rows", f"job is {status}; some tiles of this block are not computed "
                      "yet")


def _read(arr: Any, sel: Any, part: str) -> np.ndarray:
    try:
        return read(arr, sel)
    except CorruptChunk as e:
        raise PartDamaged(part, e) from None


def verify_parts(job: JobSpec, status: str, *, client: Any) -> dict[str, dict[str, Any]]:
    """Read back every stored chunk of every part through its checksum (on the workers):
    part -> :meth:`workers.VerifyReport.to_dict`. :class:`NotStored` before the first write.
    The same for both kinds: the store's metadata says what each part holds."""
    out = {}
    for part, url in job.parts.items():
        try:
            out[part] = verify_job(url, client=client).to_dict()
        except (FileNotFoundError, KeyError):
            raise NotStored(status) from None
    return out


def _lambdas(params: dict[str, Any]) -> float | list[float]:
    lams = list(params["lambdas"])
    return lams if len(lams) > 1 else lams[0]


class Exact:
    """Tiled Gram matrices: ``<part>/ntk``, ``<part>/nngp`` (n1, n2) with a done marker per
    tile (:func:`workers.compute_gram`)."""

    name = "exact"

    def plan(self, arch: Any, x1: Any, x2: Any | None, *, kernels: tuple[str, ...],
             dtype: Any, tile: int | None, memory: int, m: int | None = None,
             seed: int = 0, depths: list[int] | None = None,
             variants: list[int] | None = None,
             b_stds: list[float] | None = None,
             preprocess: dict[str, Any] | None = None) -> Planned:
        prep = check_preprocess(preprocess, tuple(x1.shape))
        jp = plan_job(arch, x1, x2, get=kernels, dtype=dtype, memory=memory, tile=tile,
                      depths=depths, variants=variants, b_stds=b_stds,
                      flip=bool(prep and prep.get("flip")))
        return Planned(jp.spec.model_dump(mode="json"), list(jp.get), jp.dtype.name, jp.tile,
                       jp.depths, jp.variants, jp.b_stds, prep)

    def start(self, job: JobSpec, parts: dict[str, GramJob], *, client: Any, memory: int,
              verify: bool) -> None:
        common = dict(arch=job.arch, tile=job.tile, client=client, get=job.kernels,
                      dtype=job.dtype, verify=verify, memory=memory,
                      depths=None if job.depths is None else list(job.depths),
                      variants=None if job.variants is None else list(job.variants),
                      b_stds=None if job.b_stds is None else list(job.b_stds),
                      preprocess=job.preprocess)
        for part, url in job.parts.items():  # test x train: rows of test, columns of train
            train, test = job.inputs()
            x1, x2 = (train, None) if part == "train" else (test, train)
            parts[part] = compute_gram(x1=x1, x2=x2, store=url, **common)

    def read_block(self, job: JobSpec, kind: str, part: str, rows: str | None,
                   cols: str | None, *, status: str, max_bytes: int,
                   depth: int | None = None, variant: int | None = None,
                   b_std: float | None = None) -> np.ndarray:
        g = _open(part_url(job.url, part), status)
        _, done = _arrays(g, status, kind, "done")
        arr = kernel_array(g, kind, depth, variant, b_std)
        r, c = span(rows, arr.shape[0], "rows"), span(cols, arr.shape[1], "cols")
        _check_bytes(r, c, arr.dtype.itemsize, max_bytes)
        _check_marks(done, _tiles(job.tile, r, c), part, status)
        return _read(arr, (r, c), part)

    def coefficient_rows(self, job: JobSpec, kind: str) -> int:
        return job.n_train

    def check_solve(self, job: JobSpec, request: dict[str, Any]) -> None:
        depths, variants = list(job.depths or ()), job.variants
        depth, sel, variant = request.get("depth"), request.get("select"), \
            request.get("variant")
        b_stds, b_std = job.b_stds, request.get("b_std")
        for field, value, values in (("variant", variant, variants),
                                     ("b_std", b_std, b_stds)):
            if value is not None and values is None:
                raise InputError(f"this job has no {field}s", field=field)
            if value is not None and value not in values:
                raise InputError(f"must be one of the job's {field}s {list(values)}, got "
                                 f"{value}", field=field)
        if sel is not None:
            given = [f for f, v in (("depth", depth), ("variant", variant), ("b_std", b_std))
                     if v is not None]
            if given:
                raise InputError("give depth (and variant, b_std) or select, not both "
                                 "(select chooses them)", field=given[0])
            by_validation = sel.get("criterion") == "validation"
            if request.get("solver") != "direct" and not by_validation:
                raise InputError("selection scores closed-form leave-one-out / GCV from an "
                                 "eigendecomposition: needs solver 'direct' (or criterion "
                                 "'validation', by CG)", field="select")
            if by_validation and sel.get("times"):
                raise InputError("a validation selection chooses λ, not gradient-flow time",
                                 field="select.times")
            for k in sel.get("kinds") or ():
                if k not in job.kernels:
                    raise InputError(f"this job computed {list(job.kernels)}, not {k!r}",
                                     field="select.kinds")
            for d in sel.get("depths") or ():
                if d not in depths:
                    raise InputError(f"must be among the job's depths {depths or None}, got "
                                     f"{d}", field="select.depths")
            for field, values in (("variants", variants), ("b_stds", b_stds)):
                for v in sel.get(field) or ():
                    if v not in (values or ()):
                        raise InputError(f"must be among the job's {field} "
                                         f"{None if values is None else list(values)}, got "
                                         f"{v}", field=f"select.{field}")
            if sel.get("times") and (request.get("analyses") or {}).get("variance"):
                raise InputError("a gradient-flow selection has no predictive variances",
                                 field="analyses.variance")
            if not sel.get("times") and any(v <= 0 for v in request.get("lambdas") or ()):
                raise InputError("selection needs every λ > 0 (λ = 0 has no leave-one-out "
                                 "residual)", field="lambdas")
        elif depths and depth is None:
            raise InputError(f"this job is a family of depths {depths}: name one, or "
                             "select", field="depth")
        elif depth is not None and depth not in depths:
            raise InputError(f"must be one of the job's depths {depths or None}, got {depth}",
                             field="depth")
        elif variants is not None and variant is None and request.get("kind") == "ntk":
            raise InputError(f"this job's NTK has variants {list(variants)}: name one, or "
                             "select", field="variant")
        elif b_stds is not None and b_std is None:
            raise InputError(f"this job is a family of b_stds {list(b_stds)}: name one, or "
                             "select", field="b_std")

    def solve(self, job: JobSpec, labels: np.ndarray, test_labels: np.ndarray | None,
              params: dict[str, Any], *, client: Any) -> list[SolveResult]:
        p, an = dict(params), params.get("analyses") or {}
        train = part_url(job.url, "train")
        chosen = None
        if p.get("select") is not None:  # the best (member, kernel, λ or t), then its solve
            sel = p["select"]
            members = dict(kinds=sel.get("kinds") or [p["kind"]], depths=sel.get("depths"),
                           variants=sel.get("variants"), b_stds=sel.get("b_stds"),
                           lambdas=p["lambdas"], relative=bool(p.get("relative")))
            if sel.get("criterion") == "validation":  # distributed CG, any n
                chosen = select_by_validation(train, labels, **members,
                                              validation=sel.get("validation", 0.2),
                                              seed=sel.get("seed", 0), tol=p["tol"],
                                              maxiter=p["maxiter"], client=client)
            else:
                chosen = select_member(train, labels, **members,
                                       criterion=sel.get("criterion"),
                                       times=sel.get("times"), lr=sel.get("lr", 1.0))
            best = chosen.best
            p.update(kind=best["kernel"], depth=best["depth"], variant=best.get("variant"),
                     b_std=best.get("b_std"))
            if "t" in best:  # gradient flow for the chosen time, no ridge
                p.update(lambdas=[0.0], relative=False, flow_time=best["t_absolute"])
                an = {**an, "lr": sel.get("lr", 1.0)}
            else:
                p.update(lambdas=[best["lam"]])
        kw = dict(solver=p["solver"], name=p["kind"], tol=p["tol"], maxiter=p["maxiter"],
                  preconditioner=None if p["preconditioner"] == "none"
                  else p["preconditioner"], rank=min(p["rank"], job.n_train),
                  cross=job.parts.get("test"), test_labels=test_labels, client=client,
                  save=None, lr=an.get("lr", 1.0), relative=bool(p.get("relative")),
                  depth=p.get("depth"), variant=p.get("variant"), b_std=p.get("b_std"),
                  flow_time=p.get("flow_time"))
        analysis = dict(times=an.get("times"), bound=an.get("bound", False),
                        spectrum_k=an.get("spectrum", 0),
                        min_eig=an.get("min_eigenvalue", False),
                        variance=bool(an.get("variance")))
        # direct: one eigendecomposition serves every λ; CG: block CG, every λ and class
        # in one loop (one kernel product per iteration), analyses at the first λ
        res = solve_exact(train, labels, _lambdas(p), **kw, **analysis)
        if chosen is not None:
            res.analyses["selection"] = chosen.to_dict()
        return [res]


class Features:
    """Random features: ``<part>/ntk``, ``<part>/nngp`` (n, D) with a done marker per row
    tile (:func:`workers.compute_features`); one feature map for train and test rows."""

    name = "features"

    def plan(self, arch: Any, x1: Any, x2: Any | None, *, kernels: tuple[str, ...],
             dtype: Any, tile: int | None, memory: int, m: int | None = None,
             seed: int = 0, depths: list[int] | None = None,
             variants: list[int] | None = None,
             b_stds: list[float] | None = None,
             preprocess: dict[str, Any] | None = None) -> Planned:
        if check_preprocess(preprocess, tuple(x1.shape)) is not None:
            raise InputError("preprocessing is an option of method 'exact'",
                             field="preprocess")
        for name, value in (("depths", depths), ("variants", variants), ("b_stds", b_stds)):
            if value is not None:
                raise InputError("families are computed by method 'exact'", field=name)
        if m is None:
            raise InputError("required with method 'features'", field="m")
        if x2 is not None and tuple(x2.shape[1:]) != tuple(x1.shape[1:]):
            raise InputError(f"trailing shape {tuple(x2.shape[1:])} does not match the "
                             f"train set's {tuple(x1.shape[1:])}", field="x2")
        fm, dt, tile = plan_features(arch, x1, m=m, seed=seed, get=kernels, dtype=dtype,
                                     tile=tile)
        return Planned(fm.arch.model_dump(mode="json"), list(check_get(kernels)), dt.name,
                       tile)

    def start(self, job: JobSpec, parts: dict[str, GramJob], *, client: Any, memory: int,
              verify: bool) -> None:
        common = dict(arch=job.arch, tile=job.tile, client=client, get=job.kernels,
                      dtype=job.dtype, verify=verify, m=job.m, seed=job.seed)
        for part, url in job.parts.items():
            train, test = job.inputs()
            x = train if part == "train" else test
            parts[part] = compute_features(x=x, store=url, **common)

    def read_block(self, job: JobSpec, kind: str, part: str, rows: str | None,
                   cols: str | None, *, status: str, max_bytes: int,
                   depth: int | None = None, variant: int | None = None,
                   b_std: float | None = None) -> np.ndarray:
        """``Φ_part[rows] Φ_train[cols]ᵀ``."""
        for name, value in (("depth", depth), ("variant", variant), ("b_std", b_std)):
            if value is not None:
                raise InputError("a features job is one network, not a family of depths",
                                 field=name)
        gp = _open(part_url(job.url, part), status)
        gt = _open(part_url(job.url, "train"), status)
        (zp,), (zt,) = _arrays(gp, status, kind), _arrays(gt, status, kind)
        r, c = span(rows, zp.shape[0], "rows"), span(cols, zt.shape[0], "cols")
        _check_bytes(r, c, zp.dtype.itemsize, max_bytes)
        for name, g, s in ((part, gp, r), ("train", gt, c)):
            _check_marks(g["done"], _tiles(job.tile, s), name, status)
        return _read(zp, r, part) @ _read(zt, c, "train").T

    def coefficient_rows(self, job: JobSpec, kind: str) -> int:
        meta = open_group(part_url(job.url, "train"), mode="r").attrs.get("ntkcompute", {})
        return int(meta.get("dims", {}).get(kind, job.n_train))

    def check_solve(self, job: JobSpec, request: dict[str, Any]) -> None:
        if request.get("select") is not None:
            raise InputError("selection needs the Gram matrices of method 'exact'",
                             field="select")
        for name in ("depth", "variant", "b_std"):
            if request.get(name) is not None:
                raise InputError("a features job is one network, not a family of depths",
                                 field=name)
        analyses = request.get("analyses") or {}
        if analyses.get("times") or analyses.get("bound") or analyses.get("spectrum") \
                or analyses.get("variance"):
            raise InputError("not available for a features job (its solve is ridge "
                             "regression on the features)", field="analyses")

    def solve(self, job: JobSpec, labels: np.ndarray, test_labels: np.ndarray | None,
              params: dict[str, Any], *, client: Any) -> list[SolveResult]:
        p = params
        return [solve_features(part_url(job.url, "train"), labels, _lambdas(p), name=p["kind"],
                               test=job.parts.get("test"), test_labels=test_labels,
                               tol=p["tol"], maxiter=p["maxiter"], client=client,
                               relative=bool(p.get("relative")))]


#: method -> job kind
KINDS: dict[str, JobKind] = {k.name: k for k in (Exact(), Features())}


def kind_of(method: str) -> JobKind:
    """The job kind of a method name (``exact`` or ``features``)."""
    try:
        return KINDS[method]
    except KeyError:
        raise InputError(f"must be one of {sorted(KINDS)}, got {method!r}",
                         field="method") from None
