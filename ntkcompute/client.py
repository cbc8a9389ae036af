"""Python client of the ntkcompute REST service.

    from ntkcompute.client import Client
    c = Client("http://localhost:8000", api_key="ntk_...")
    train = c.upload(x_train, y_train)
    test = c.upload(x_test, y_test)
    job = c.kernel(train, arch, test=test).wait()      # progress bar while it runs
    sol = c.solve(job, lambdas=[1e-3]).wait()
    sol.metrics["best"]["accuracy"], sol.predictions()

Uploads stream the array as ``.npy`` without building the file in memory; ``wait()`` follows
a job's Server-Sent Events stream (polling only where the server offers none); lists
(``datasets()``, ``jobs()``, ``solves()``) follow the pages' ``Link`` headers. Every error
the server answers (an RFC 9457 problem) becomes an :class:`ApiError` carrying its status,
field and message.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np

from .lifecycle import FINAL, Status


class ApiError(RuntimeError):
    """The server refused a request: ``status`` (HTTP), ``field``, ``detail`` (its message)."""

    def __init__(self, status: int, detail: str, field: str | None = None) -> None:
        self.status, self.detail, self.field = status, detail, field
        super().__init__(f"HTTP {status}: {detail}")


#: Seconds a job's event stream may stay silent (the server sends a keep-alive every 15 s)
#: before the client gives up on it and polls instead.
EVENTS_READ_TIMEOUT = 60.0


class _NoStream(Exception):
    """The server answered an event stream's request with something else."""


class JobFailed(RuntimeError):
    """A kernel job or solve ended failed or cancelled; the message is the server's error."""


class _NpyStream(io.RawIOBase):
    """A read-only file of ``np.save(a)``'s bytes, produced a few MB at a time."""

    def __init__(self, a: np.ndarray, block_bytes: int = 4 << 20) -> None:
        self._a = a if a.flags.c_contiguous or a.flags.f_contiguous else np.ascontiguousarray(a)
        order = self._a.flags.f_contiguous and not self._a.flags.c_contiguous
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {
            "descr": np.lib.format.dtype_to_descr(a.dtype), "fortran_order": order,
            "shape": a.shape})
        self._chunks = self._gen(header.getvalue(), order, block_bytes)
        self._buf = b""
        self.size = len(header.getvalue()) + a.nbytes

    def _gen(self, header: bytes, fortran: bool, block_bytes: int) -> Iterator[bytes]:
        yield header
        flat = self._a.ravel(order="F" if fortran else "C")  # a view: the array is contiguous
        step = max(1, block_bytes // max(1, flat.itemsize))
        for i in range(0, flat.size, step):
            yield flat[i:i + step].tobytes()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            nxt = next(self._chunks, None)
            if nxt is None:
                break
            self._buf += nxt
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out


class Dataset:
    def __init__(self, client: Client, info: dict) -> None:
        self._c, self.info = client, info
        self.id: str = info["id"]

    def __repr__(self) -> str:
        return f"Dataset({self.id}, shape={self.info['shape']})"


class _Job:
    _path = ""

    def __init__(self, client: Client, info: dict) -> None:
        self._c, self.info = client, info
        self.id: str = info["id"]

    def refresh(self) -> dict:
        self.info = self._c._json("GET", f"{self._path}/{self.id}")
        return self.info

    @property
    def status(self) -> str:
        """queued / running / succeeded / failed / cancelled (fetched now)."""
        return self.refresh()["status"]

    @property
    def dashboard_url(self) -> str | None:
        """The Dask dashboard of the cluster the job runs on (None where there is none)."""
        return self.info.get("dashboard_url")

    def _raise_if_failed(self) -> None:
        if self.info["status"] in (Status.FAILED, Status.CANCELLED):
            raise JobFailed(f"{self.id} {self.info['status']}: {self.info.get('error')}")

    def _follow(self, timeout: float | None, poll: float, show: Any) -> None:
        """Until the job ends: its states from ``GET .../events`` (Server-Sent Events) merged
        into :attr:`info`, ``show(info)`` after each; polling ``GET`` every ``poll`` seconds
        where the stream is not available (an older server, a proxy that buffers it)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        show(self.info)
        if self.info["status"] in FINAL:
            return
        try:
            for event, state in self._c._events(f"{self._path}/{self.id}/events", deadline,
                                                f"{self.id} still running after {timeout} s"):
                self.info.update(state)
                show(self.info)
                if event == "end":
                    return
            if self.info["status"] in FINAL:
                return
        except (httpx.TransportError, _NoStream):
            pass
        while True:  # the fallback
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.id} still {self.info['status']} after {timeout} s")
            time.sleep(poll)
            show(self.refresh())
            if self.info["status"] in FINAL:
                return


class KernelJob(_Job):
    """A kernel job on the server: ``wait()``, ``status``, ``block()``, ``to_numpy()``."""

    _path = "/v1/kernels"

    def wait(self, timeout: float | None = None, progress: bool = True,
             poll: float = 0.5) -> KernelJob:
        """Follow the job's event stream until it ends (a tqdm bar of tiles with the ETA);
        raise :class:`JobFailed` unless it succeeded, ``TimeoutError`` after ``timeout``
        seconds. ``poll``: seconds between requests where no stream is available."""
        from tqdm import tqdm

        with tqdm(total=self.info.get("tiles_total") or None, unit="tile",
                  disable=not progress, desc=self.id) as bar:
            def show(info: dict) -> None:
                if info.get("tiles_total") and bar.total != info["tiles_total"]:
                    bar.total = info["tiles_total"]
                bar.update(info.get("tiles_done", 0) - bar.n)
                if info.get("eta_seconds") is not None:
                    bar.set_postfix(eta=f"{info['eta_seconds']:.0f}s", refresh=False)
                bar.refresh()

            self._follow(timeout, poll, show)
        self._raise_if_failed()
        return self

    def cancel(self) -> KernelJob:
        self.info = self._c._json("DELETE", f"{self._path}/{self.id}")
        return self

    def resume(self) -> KernelJob:
        """Continue a failed or cancelled job, or repair a finished one: the service first
        verifies every stored chunk, then computes exactly the tiles not done or damaged."""
        self.info = self._c._json("POST", f"{self._path}/{self.id}/resume")
        return self

    def verify(self) -> dict:
        """Every stored chunk read back through its checksum on the workers: ``{"ok",
        "status", "parts": {"train": {"ok", "bad": [{array, chunk, tile, problem}],
        "pending", ...}, "test": ...}}``."""
        return self._c._json("POST", f"{self._path}/{self.id}/verify")

    @property
    def depths(self) -> list[int] | None:
        """A family job's member depths (None for one network)."""
        return self.info.get("depths")

    @property
    def variants(self) -> list[int] | None:
        """A family job's NTK variants (fixed bottom blocks; None without)."""
        return self.info.get("variants")

    @property
    def b_stds(self) -> list[float] | None:
        """A family job's bias grid (None without)."""
        return self.info.get("b_stds")

    def block(self, kind: str = "ntk", rows: tuple[int, int] | None = None,
              cols: tuple[int, int] | None = None, part: str = "train",
              depth: int | None = None, variant: int | None = None,
              b_std: float | None = None) -> np.ndarray:
        """One block ``K[rows[0]:rows[1], cols[0]:cols[1]]`` of a stored kernel (of member
        ``depth``, NTK ``variant`` and ``b_std`` of a family job)."""
        params: dict[str, Any] = {"kind": kind, "part": part}
        for name, value in (("depth", depth), ("variant", variant), ("b_std", b_std)):
            if value is not None:
                params[name] = value
        if rows is not None:
            params["rows"] = f"{rows[0]}:{rows[1]}"
        if cols is not None:
            params["cols"] = f"{cols[0]}:{cols[1]}"
        return self._c._npy(f"{self._path}/{self.id}/blocks", params)

    def to_numpy(self, kind: str = "ntk", part: str = "train", depth: int | None = None,
                 variant: int | None = None, b_std: float | None = None) -> np.ndarray:
        """The whole ``kind`` kernel of ``part`` ("train" n x n, "test" m x n; of member
        ``depth``, NTK ``variant`` and ``b_std`` of a family job), fetched in row stripes
        within the server's block-size limit."""
        rows, cols = self.info["shape"][part]
        itemsize = np.dtype(self.info["dtype"]).itemsize
        step = max(1, self._c.limits()["max_block_bytes"] // (cols * itemsize))
        out = np.empty((rows, cols), dtype=self.info["dtype"])
        for r in range(0, rows, step):
            out[r:r + step] = self.block(kind, (r, min(rows, r + step)), None, part, depth,
                                         variant, b_std)
        return out


class SolveJob(_Job):
    """A solve on the server: ``wait()``, ``metrics``, ``predictions()``, ``coefficients()``."""

    _path = "/v1/solves"

    def wait(self, timeout: float | None = None, poll: float = 0.5,
             progress: bool = False) -> SolveJob:
        """Follow the solve's event stream until it ends, then fetch it (metrics, analyses);
        raise :class:`JobFailed` unless it succeeded, ``TimeoutError`` after ``timeout``
        seconds. ``progress``: a line with its status and the time elapsed."""
        from tqdm import tqdm

        with tqdm(total=None, bar_format="{desc} {postfix} [{elapsed}]",
                  disable=not progress, desc=self.id) as bar:
            def show(info: dict) -> None:
                bar.set_postfix_str(str(info["status"]))

            self._follow(timeout, poll, show)
        self.refresh()
        self._raise_if_failed()
        return self

    @property
    def metrics(self) -> dict | None:
        """Per-λ iterations, seconds, accuracy/MSE, and the best λ's entry."""
        return self.info.get("metrics")

    def predictions(self, lambda_index: int | None = None) -> np.ndarray:
        """``(L, m, c)`` test outputs for every λ, or ``(m, c)`` for one."""
        params = {} if lambda_index is None else {"lambda_index": lambda_index}
        return self._c._npy(f"{self._path}/{self.id}/predictions", params)

    def variances(self, lambda_index: int | None = None) -> np.ndarray:
        """``(L, m)`` predictive variances of the test outputs (a solve made with
        ``variance=True``), or ``(m,)`` for one λ."""
        params = {} if lambda_index is None else {"lambda_index": lambda_index}
        return self._c._npy(f"{self._path}/{self.id}/variances", params)

    def coefficients(self, lambda_index: int | None = None) -> np.ndarray:
        params = {} if lambda_index is None else {"lambda_index": lambda_index}
        return self._c._npy(f"{self._path}/{self.id}/coefficients", params)


class Client:
    """Connection to an ntkcompute service with one API key."""

    def __init__(self, url: str, api_key: str, timeout: float = 600.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout,
                                  headers={"Authorization": f"Bearer {api_key}"})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # transport -------------------------------------------------------------------------
    def _check(self, r: httpx.Response) -> httpx.Response:
        if r.status_code >= 400:
            try:
                body = r.json()
                detail, field = body.get("detail", r.text), body.get("field")
            except ValueError:
                detail, field = r.text, None
            raise ApiError(r.status_code, str(detail), field)
        return r

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        r = self._check(self._http.request(method, path, **kw))
        return r.json() if r.content else None

    def _events(self, path: str, deadline: float | None, late: str = "timed out"
                ) -> Iterator[tuple[str, dict]]:
        """``(event, data)`` of the Server-Sent Events stream at ``path``, until it closes;
        :class:`_NoStream` when the server does not answer one, ``TimeoutError(late)`` past
        ``deadline`` (``time.monotonic()``)."""
        import json

        timeout = httpx.Timeout(30.0, read=EVENTS_READ_TIMEOUT)
        with self._http.stream("GET", path, timeout=timeout,
                               headers={"Accept": "text/event-stream"}) as r:
            if r.status_code != 200 or not r.headers.get(
                    "content-type", "").startswith("text/event-stream"):
                raise _NoStream(r.status_code)
            event, data = "message", []
            for line in r.iter_lines():
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(late)
                if not line:  # an event's end
                    if data:
                        yield event, json.loads("\n".join(data))
                    event, data = "message", []
                elif line.startswith(":"):  # a keep-alive comment
                    continue
                else:
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name == "event":
                        event = value
                    elif name == "data":
                        data.append(value)

    def _npy(self, path: str, params: dict) -> np.ndarray:
        r = self._check(self._http.get(path, params=params))
        return np.load(io.BytesIO(r.content), allow_pickle=False)

    # API -------------------------------------------------------------------------------
    def upload(self, x: np.ndarray, y: np.ndarray | None = None) -> Dataset:
        """Upload ``x`` (n, ...) and optional labels/targets ``y`` (n,) or (n, c); integer
        ``y`` are classes."""
        x = np.asarray(x)
        files: dict[str, Any] = {"x": ("x.npy", _NpyStream(x), "application/x-npy")}
        if y is not None:
            files["y"] = ("y.npy", _NpyStream(np.asarray(y)), "application/x-npy")
        return Dataset(self, self._json("POST", "/v1/datasets", files=files))

    def dataset(self, dataset_id: str) -> Dataset:
        return Dataset(self, self._json("GET", f"/v1/datasets/{dataset_id}"))

    def delete_dataset(self, dataset: Dataset | str) -> None:
        self._json("DELETE", f"/v1/datasets/{_id(dataset)}")

    def kernel(self, train: Dataset | str, arch: Any, test: Dataset | str | None = None,
               kernels: tuple[str, ...] = ("ntk", "nngp"), dtype: str | None = None,
               tile: int | None = None, method: str = "exact", m: int | None = None,
               seed: int = 0, depths: list[int] | None = None,
               variants: list[int] | None = None,
               b_stds: list[float] | None = None,
               preprocess: dict | None = None) -> KernelJob:
        """Start the kernel job of ``arch`` (spec object, dict or JSON) on ``train`` (and
        test x train); returns at once: call ``wait()``. ``method="features"`` stores NTK
        random features of dimension ~2m instead (ReLU nets, FC or conv); blocks and solves
        work the same way. ``depths``: a kernel family (``arch`` with one top-level
        ``repeat``): every listed depth from one pass; blocks and solves then name a
        ``depth``, or a solve selects one. ``variants``: with ``depths``, each member's NTK
        also with its stem and first v repeats fixed (its blocks and solves name a
        ``variant``); ``b_stds``: with ``depths``, every member for each value of every
        layer's ``b_std`` (blocks and solves name a ``b_std``). ``preprocess``: ``{"zca":
        strength, "standardize": True}``, input transforms fit on the train rows."""
        if hasattr(arch, "model_dump"):
            arch = arch.model_dump(mode="json")
        elif isinstance(arch, str):
            import json

            arch = json.loads(arch)
        body = {"train": _id(train), "test": None if test is None else _id(test),
                "arch": arch, "kernels": list(kernels), "dtype": dtype, "tile": tile,
                "method": method, "m": m, "seed": seed}
        if depths is not None:
            body["depths"] = [int(d) for d in depths]
        if variants is not None:
            body["variants"] = [int(v) for v in variants]
        if b_stds is not None:
            body["b_stds"] = [float(b) for b in b_stds]
        if preprocess is not None:
            body["preprocess"] = dict(preprocess)
        return KernelJob(self, self._json("POST", "/v1/kernels", json=body))

    def job(self, kernel_id: str) -> KernelJob:
        return KernelJob(self, self._json("GET", f"/v1/kernels/{kernel_id}"))

    def solve(self, kernel: KernelJob | str, lambdas: float | list[float] | None = None, *,
              labels: Any = None, test_labels: Any = None, relative: bool | None = None,
              solver: str = "cg",
              kind: str = "ntk", tol: float = 1e-8, maxiter: int = 1000,
              preconditioner: str = "nystrom", rank: int = 100,
              times: list[float] | None = None, lr: float = 1.0, bound: bool = False,
              spectrum: int = 0, min_eigenvalue: bool = False,
              variance: bool = False, depth: int | None = None,
              select: dict | None = None, variant: int | None = None,
              b_std: float | None = None) -> SolveJob:
        """Kernel regression on a finished kernel job; labels default to the datasets' y.
        λ is absolute unless ``relative=True`` (multiples of mean(diag K)), as in every
        solver. ``min_eigenvalue``: report λmin(K) (Lanczos with cg, exact with direct).
        A system ``K + λI`` that is not positive definite makes the solve fail, its error
        naming the cause and the remedy. ``variance``: predictive variances of the test
        outputs (direct solver; :meth:`SolveJob.variances`), the NNGP posterior's or the
        gradient-flow ensemble's, as :func:`workers.solve`. ``lambdas`` default: 0, or
        with ``select`` the server's grid; ``relative`` default: False, or with ``select``
        True.

        ``depth`` (and ``variant``, ``b_std``): the member of a family job to solve on.
        ``select``: ``{"criterion": "accuracy" | "loo" | "gcv", "kinds": [...], "depths":
        [...], "variants": [...], "b_stds": [...], "times": [...], "lr": 1.0, "validation":
        0.2, "seed": 0}`` (any may be left out; criterion "validation" scores each candidate
        fit by CG on a held-out split, with any solver): the best (b_std, depth, variant,
        kernel, λ) by closed-form
        leave-one-out / GCV on the train rows (``solver="direct"``), or with ``times`` the
        best gradient-flow time, then the solve with it; the choice and the score table are
        in ``analyses["selection"]``."""
        body: dict[str, Any] = {"kernel": _id(kernel),
                "solver": solver, "kind": kind,
                "tol": tol, "maxiter": maxiter, "preconditioner": preconditioner,
                "rank": rank, "labels": _listify(labels), "test_labels": _listify(test_labels),
                "analyses": {"times": times, "lr": lr, "bound": bound, "spectrum": spectrum,
                             "min_eigenvalue": min_eigenvalue, "variance": variance}}
        if relative is not None:  # (None: the server's default, relative for a selection)
            body["relative"] = bool(relative)
        if lambdas is not None:
            body["lambdas"] = [float(v) for v in (lambdas if isinstance(lambdas, (list, tuple))
                                                  else [lambdas])]
        if depth is not None:
            body["depth"] = int(depth)
        if variant is not None:
            body["variant"] = int(variant)
        if b_std is not None:
            body["b_std"] = float(b_std)
        if select is not None:
            body["select"] = dict(select)
        return SolveJob(self, self._json("POST", "/v1/solves", json=body))

    def _pages(self, path: str, limit: int) -> Iterator[dict]:
        """Every row of the list at ``path``, page after page (``Link: rel="next"``)."""
        url: str | None = f"{path}?limit={limit}"
        while url is not None:
            r = self._check(self._http.get(url))
            yield from r.json()
            url = r.links.get("next", {}).get("url")

    def datasets(self, page: int = 100) -> Iterator[Dataset]:
        """This key's datasets, oldest first (fetched ``page`` at a time)."""
        return (Dataset(self, d) for d in self._pages("/v1/datasets", page))

    def jobs(self, page: int = 100) -> Iterator[KernelJob]:
        """This key's kernel jobs, oldest first, as summaries (``refresh()`` for ``arch``)."""
        return (KernelJob(self, d) for d in self._pages("/v1/kernels", page))

    def solves(self, page: int = 100) -> Iterator[SolveJob]:
        """This key's solves, oldest first, as summaries (no labels, no analyses:
        ``refresh()`` for them)."""
        return (SolveJob(self, d) for d in self._pages("/v1/solves", page))

    def get_solve(self, solve_id: str) -> SolveJob:
        return SolveJob(self, self._json("GET", f"/v1/solves/{solve_id}"))

    def limits(self) -> dict:
        """The server's limits: max_upload_bytes, max_n, max_block_bytes, max_jobs_per_key."""
        return self._json("GET", "/v1/limits")

    def health(self) -> dict:
        return self._json("GET", "/readyz")


def _id(obj: Any) -> str:
    return obj if isinstance(obj, str) else obj.id


def _listify(a: Any) -> Any:
    return None if a is None else np.asarray(a).tolist()


class ServiceBackend:
    """Gram matrices from a service, for the estimators (:mod:`ntkcompute.estimators`):
    ``NTKClassifier(backend=ServiceBackend(client))`` computes every kernel as a service
    job, in the inputs' dtype. A symmetric Gram is a job on ``x1``; ``K(x1, x2)`` is the
    test x train part of a job whose train set is ``x2`` and whose test set is ``x1``; a
    family of depths (``family``) is one job with ``depths``. Its uploads are deleted once
    the kernel is fetched (the jobs stay, as any job does)."""

    def __init__(self, client: Client, tile: int | None = None,
                 timeout: float | None = None) -> None:
        self.client, self.tile, self.timeout = client, tile, timeout

    def __deepcopy__(self, memo: dict) -> ServiceBackend:
        return self  # one connection, shared by an estimator's clones

    def gram(self, arch: Any, x1: np.ndarray, x2: np.ndarray | None = None,
             get: str = "ntk") -> np.ndarray:
        """``(n1, n2)`` kernel ``get`` of ``arch`` between the rows of x1 and x2."""
        x1 = np.asarray(x1)
        train = self.client.upload(x1 if x2 is None else np.asarray(x2))
        test = None if x2 is None else self.client.upload(x1)
        try:
            job = self.client.kernel(train, arch, test=test, kernels=(get,),
                                     dtype=x1.dtype.name, tile=self.tile)
            job.wait(self.timeout, progress=False)
            return job.to_numpy(get, "train" if x2 is None else "test")
        finally:
            for ds in (train, test):
                if ds is not None:
                    self.client.delete_dataset(ds)

    def family(self, arch: Any, x: np.ndarray, depths: list[int], get: str = "ntk",
               variants: list[int] | None = None,
               b_stds: list[float] | None = None) -> np.ndarray:
        """``(D, n, n)``: the train Gram ``get`` of every depth of a family, from one family
        job (``depths``) of the service, float64; with ``variants`` the NTK's
        ``(D, V, n, n)``, with ``b_stds`` ``B`` first."""
        import itertools

        train = self.client.upload(np.asarray(x))
        try:
            job = self.client.kernel(train, arch, kernels=(get,), tile=self.tile,
                                     depths=list(depths),
                                     variants=None if variants is None else list(variants),
                                     b_stds=None if b_stds is None else list(b_stds))
            job.wait(self.timeout, progress=False)
            axes = [("b_std", b_stds), ("depth", depths), ("variant", variants)]
            axes = [(a, list(v)) for a, v in axes if v is not None]
            out = [job.to_numpy(get, "train", **dict(zip((a for a, _ in axes), key,
                                                         strict=True)))
                   for key in itertools.product(*(v for _, v in axes))]
            n = len(x)
            return np.stack(out).reshape(*(len(v) for _, v in axes), n, n)
        finally:
            self.client.delete_dataset(train)
