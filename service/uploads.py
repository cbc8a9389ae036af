"""Dataset uploads: the body streams to a staging file, is memory-mapped, checked, and written
to the store chunk by chunk, so an upload is never held in memory, let alone twice.

Accepted bodies:
  * raw ``.npy`` (x only) or ``.npz`` (arrays ``x`` and optional ``y``), any content type but
    multipart;
  * ``multipart/form-data`` with file parts ``x`` and optional ``y`` (each ``.npy``), or one
    part ``file`` holding an ``.npz``.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from starlette.datastructures import UploadFile
from starlette.requests import Request

from .errors import ApiError

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
CHUNK = 1 << 20


@dataclass
class Staged:
    """Files of one upload in the staging dir; ``sha256`` is that of the x part (or body)."""

    dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    sha256: str = ""

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def clean_stale(staging: Path, max_age: float = 6 * 3600) -> int:
    """Remove upload dirs a killed process left behind (older than ``max_age`` seconds, so a
    second service sharing the directory keeps its uploads in flight); returns how many."""
    import time

    old = [d for d in staging.glob("up-*") if time.time() - d.stat().st_mtime > max_age]
    for d in old:
        shutil.rmtree(d, ignore_errors=True)
    return len(old)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "body", f"upload exceeds the limit of {limit} bytes")


async def stage(request: Request, staging: Path, limit: int) -> Staged:
    """Stream the request body into ``staging``; raise 413 past ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _too_large(limit)
    st = Staged(staging / f"up-{uuid.uuid4().hex}")
    st.dir.mkdir(parents=True)
    # one byte count for both body kinds: the limit holds without Content-Length too
    counted = Request(request.scope, _counting_receive(request, limit))
    try:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            await _stage_multipart(counted, st)
        else:
            h = hashlib.sha256()
            path = st.dir / "body"
            with path.open("wb") as f:
                async for chunk in counted.stream():
                    h.update(chunk)
                    f.write(chunk)
            st.files["body"], st.sha256 = path, h.hexdigest()
        return st
    except BaseException:
        st.cleanup()
        raise


async def _stage_multipart(request: Request, st: Staged) -> None:
    try:
        form = await request.form(max_files=3, max_fields=10)
    except ApiError:
        raise
    except Exception as e:  # malformed multipart framing
        raise ApiError(422, "body", f"malformed multipart body: {e}") from None
    try:
        parts = {k: v for k, v in form.multi_items() if isinstance(v, UploadFile)}
        unknown = sorted(set(parts) - {"x", "y", "file"})
        if unknown or not parts:
            raise ApiError(422, "body", "multipart parts must be files named 'x' (and 'y'), "
                           f"or 'file' (.npz); got {sorted(parts) or 'no files'}")
        for name, up in parts.items():
            h = hashlib.sha256()
            path = st.dir / name
            with path.open("wb") as f:
                while chunk := await up.read(CHUNK):
                    h.update(chunk)
                    f.write(chunk)
            st.files[name] = path
            if name in ("x", "file"):
                st.sha256 = h.hexdigest()
        if "file" in parts and len(parts) > 1:
            raise ApiError(422, "file", "send either 'file' (.npz) or 'x'/'y' parts, not both")
        if "y" in parts and "x" not in parts:
            raise ApiError(422, "x", "missing: a 'y' part needs an 'x' part")
    finally:
        await form.close()


def _counting_receive(request: Request, limit: int) -> Any:
    seen = 0

    async def receive() -> dict:
        nonlocal seen
        message = await request.receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise _too_large(limit)
        return message

    return receive


def _load_npy(path: Path, name: str) -> np.ndarray:
    try:
        with path.open("rb") as f:
            magic = f.read(6)
        if magic != NPY_MAGIC:
            raise ValueError("not a .npy file (no \\x93NUMPY header)")
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ApiError(422, name, f"malformed .npy: {e}") from None
    if not isinstance(a, np.ndarray):
        raise ApiError(422, name, "malformed .npy")
    return a


def _extract_npz(path: Path, st: Staged, field_name: str) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            wanted = {n.removesuffix(".npy"): n for n in names}
            if "x" not in wanted or set(wanted) - {"x", "y"}:
                raise ApiError(422, field_name, "an .npz must hold array 'x' and optionally "
                               f"'y'; it holds {sorted(wanted)}")
            out = {}
            for key, member in wanted.items():
                dst = st.dir / f"npz-{key}.npy"
                with z.open(member) as src, dst.open("wb") as f:
                    shutil.copyfileobj(src, f, CHUNK)
                out[key] = _load_npy(dst, key)
            return out
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
        raise ApiError(422, field_name, f"malformed .npz: {e}") from None


def arrays(st: Staged) -> dict[str, np.ndarray]:
    """Memory-mapped ``x`` (and ``y``) of a staged upload."""
    if "body" in st.files:
        path = st.files["body"]
        with path.open("rb") as f:
            magic = f.read(6)
        if magic.startswith(ZIP_MAGIC):
            return _extract_npz(path, st, "body")
        if magic == NPY_MAGIC:
            return {"x": _load_npy(path, "x")}
        raise ApiError(422, "body", "must be a .npy or .npz file (or multipart/form-data)")
    if "file" in st.files:
        return _extract_npz(st.files["file"], st, "file")
    return {k: _load_npy(p, k) for k, p in st.files.items()}


def check_arrays(x: np.ndarray, y: np.ndarray | None, max_n: int,
                 block_bytes: int = 1 << 24) -> None:
    """422 unless x is (n, features) / (n, *spatial, channels) real and finite, n <= max_n,
    and y (if any) has n rows of real finite values."""
    if x.ndim < 2 or any(s <= 0 for s in x.shape):
        raise ApiError(422, "x", "must have shape (n, features) or (n, *spatial, channels) "
                       f"with no empty axis, got {list(x.shape)}")
    if x.shape[0] > max_n:
        raise ApiError(422, "x", f"has {x.shape[0]} rows, more than the limit {max_n}")
    for name, a in (("x", x), ("y", y)):
        if a is None:
            continue
        if a.dtype.kind not in "fiu" or a.dtype.itemsize > 8:
            raise ApiError(422, name, "must be real numbers (float16/32/64 or integers), got "
                           f"dtype {a.dtype}")
        if a.dtype.kind == "f":
            step = max(1, block_bytes // max(1, a[:1].nbytes))
            for r in range(0, a.shape[0], step):
                bad = ~np.isfinite(a[r:r + step])
                if bad.any():
                    first = r + int(np.argwhere(bad)[0][0])
                    raise ApiError(422, name, f"contains NaN or infinite values (first in "
                                   f"row {first})")
    if y is not None:
        if y.ndim not in (1, 2) or y.shape[0] != x.shape[0]:
            raise ApiError(422, "y", f"must be (n,) or (n, c) with n = {x.shape[0]} rows of x, "
                           f"got shape {list(y.shape)}")
