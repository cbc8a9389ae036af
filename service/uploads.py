"""Dataset uploads: the body streams to a staging file, is memory-mapped, checked, and written
to the store chunk by chunk, so an upload is never held in memory, let alone twice.

Accepted bodies:
  * raw ``.npy`` (x only) or ``.npz`` (arrays ``x`` and optional ``y``), any content type but
    multipart;
  * ``multipart/form-data`` with file parts ``x`` and optional ``y`` (each ``.npy``), or one
    part ``file`` holding an ``.npz``.

Nothing inflates before it is known to fit (``Settings``: ``max_n``, ``max_features``,
``max_dataset_bytes``, ``max_compression_ratio``), so a hostile upload costs milliseconds:

  * every ``.npy`` header is parsed here, bounded (``MAX_HEADER``) and without pickle: a real
    numeric dtype, a shape of non-negative ints within the limits, and exactly as many data
    bytes as the shape implies; Fortran order is accepted (it is memory-mapped as such);
  * a raw ``.npy`` body is refused while it streams, as soon as its header is in;
  * an ``.npz`` is judged from its end-of-central-directory record (at most
    ``MAX_ZIP_ENTRIES`` entries, a directory of at most ``MAX_ZIP_DIR`` bytes), then from its
    directory (names, methods, declared sizes, compression ratio), then from each member's
    ``.npy`` header; members inflate with every decompressor call bounded, never past the
    declared size, and their CRC-32 is checked.
"""

from __future__ import annotations

import ast
import bz2
import hashlib
import lzma
import math
import os
import shutil
import struct
import uuid
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from starlette.datastructures import UploadFile
from starlette.requests import Request

from .config import Settings
from .errors import ApiError

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
CHUNK = 1 << 20
#: largest .npy header dict (numpy writes ~128 bytes); its 8-12 byte prefix comes on top
MAX_HEADER = 1 << 16
#: bytes that always hold a complete acceptable .npy header
MAX_PREFIX = 12 + MAX_HEADER
MAX_NDIM = 32
MAX_ZIP_ENTRIES = 2
MAX_ZIP_DIR = 1 << 16
#: members inflating to more than this must also respect ``max_compression_ratio``
RATIO_FREE_BYTES = 64 << 20
MAX_LZMA_DICT = 64 << 20
ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate",
               zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}
NPZ_NAMES = {"x": "x", "x.npy": "x", "y": "y", "y.npy": "y"}

_EOCD = struct.Struct("<4s4H2LH")  # end of central directory, 22 bytes
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # 20 bytes
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")  # 56 bytes, without extensible data
_LOCAL = struct.Struct("<4s5H3L2H")  # local file header, 30 bytes
_Bad = Callable[[str], ApiError]  # a reason -> the 422 naming the upload's field


@dataclass
class Staged:
    """Files of one upload in the staging dir; ``sha256`` is that of the x part (or body)."""

    dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    sha256: str = ""

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass(frozen=True)
class NpyHeader:
    """A parsed ``.npy`` header: ``shape``/``dtype`` data starts at byte ``offset``."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int

    @property
    def nbytes(self) -> int:
        """Bytes of data the header implies (exact, no overflow)."""
        return math.prod(self.shape) * self.dtype.itemsize


def clean_stale(staging: Path, max_age: float = 6 * 3600) -> int:
    """Remove upload dirs a killed process left behind (older than ``max_age`` seconds, so a
    second service sharing the directory keeps its uploads in flight); returns how many."""
    import time

    old = [d for d in staging.glob("up-*") if time.time() - d.stat().st_mtime > max_age]
    for d in old:
        shutil.rmtree(d, ignore_errors=True)
    return len(old)


# .npy headers ------------------------------------------------------------------------------

def parse_header(buf: bytes | bytearray, name: str, *,
                 final: bool = True) -> NpyHeader | None:
    """The ``.npy`` header at the start of ``buf`` (at most ``MAX_PREFIX`` bytes are looked at).

    Returns None when ``buf`` may be the start of a header that more bytes would complete and
    ``final`` is false; raises 422 (field ``name``) for anything but a plain real numeric
    array: bad magic or version, a header longer than ``MAX_HEADER`` (refused from its length
    field), no terminating newline, not a literal dict of exactly ``descr`` (a numeric dtype
    string: kinds f/i/u, at most 8 bytes), ``fortran_order`` (bool) and ``shape`` (a tuple of
    non-negative ints, at most ``MAX_NDIM``). Limits are :func:`check_header`'s business.
    """
    def bad(reason: str) -> ApiError:
        return ApiError(422, name, f"malformed .npy: {reason}")

    head = bytes(buf[:6])
    if head != NPY_MAGIC[:len(head)]:
        raise bad("not a .npy file (no \\x93NUMPY header)")
    if len(buf) >= 8:
        version = (buf[6], buf[7])
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise bad(f"unsupported format version {version[0]}.{version[1]}")
        size_len = 2 if version[0] == 1 else 4
        if len(buf) >= 8 + size_len:
            hlen = int.from_bytes(buf[8:8 + size_len], "little")
            if hlen > MAX_HEADER:
                raise bad(f"header of {hlen} bytes, more than {MAX_HEADER}")
            offset = 8 + size_len + hlen
            if len(buf) >= offset:
                raw = bytes(buf[8 + size_len:offset])
                return _parse_dict(raw, "utf-8" if version[0] >= 3 else "latin1", offset, name)
            if final:
                raise bad(f"unterminated header: it declares {hlen} bytes, the file ends "
                          f"{len(buf) - 8 - size_len} bytes into it")
    if final:
        raise bad(f"the file ends inside its header (after {len(buf)} bytes)")
    return None


def _parse_dict(raw: bytes, encoding: str, offset: int, name: str) -> NpyHeader:
    def bad(reason: str) -> ApiError:
        return ApiError(422, name, f"malformed .npy: {reason}")

    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError:
        raise bad(f"header is not valid {encoding}") from None
    if not text.endswith("\n"):
        raise bad("unterminated header (no newline at its end)")
    try:  # literals only: no names, calls or pickles; the parser bounds nesting
        d = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
        raise bad(f"header is not a literal dict ({type(e).__name__})") from None
    if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
        raise bad("header must be a dict of exactly 'descr', 'fortran_order' and 'shape'")
    descr, fortran, shape = d["descr"], d["fortran_order"], d["shape"]
    dtype = None
    if isinstance(descr, str) and len(descr) <= 16:  # numeric dtype strings are short
        try:
            dtype = np.dtype(descr)
        except (TypeError, ValueError, SyntaxError):
            pass
    if dtype is None or dtype.kind not in "fiu" or dtype.itemsize > 8 or dtype.fields \
            or dtype.subdtype:
        raise ApiError(422, name, "must be real numbers (float16/32/64 or integers), got "
                       f"dtype {_show(descr)}")
    if not isinstance(fortran, bool):
        raise bad(f"fortran_order must be True or False, got {_show(fortran)}")
    if not isinstance(shape, tuple) or any(type(s) is not int for s in shape):
        raise bad(f"shape must be a tuple of integers, got {_show(shape)}")
    if len(shape) > MAX_NDIM:
        raise bad(f"{len(shape)} axes, more than {MAX_NDIM}")
    if any(s < 0 for s in shape):
        raise bad(f"negative axis length in shape {_show(shape)}")
    if any(s >= 1 << 63 for s in shape):  # hex literals have no digit limit
        raise bad("an axis length beyond 2**63")
    return NpyHeader(shape, dtype, fortran, offset)


def _show(v: object) -> str:
    """repr of a header value, short (and safe for ints too long to print)."""
    try:
        text = repr(v)
    except ValueError:
        text = "..."
    return text if len(text) <= 80 else text[:77] + "..."



def check_header(h: NpyHeader, name: str, limits: Settings) -> None:
    """422 (field ``name``) unless the array fits: x is (n, features) or (n, *spatial,
    channels) and y (n,) or (n, c), with no empty axis; n <= ``max_n``; values per row (the
    product of the trailing axes) <= ``max_features``; bytes <= ``max_dataset_bytes``."""
    shape = list(h.shape)
    if name == "x" and (len(shape) < 2 or 0 in shape):
        raise ApiError(422, "x", "must have shape (n, features) or (n, *spatial, channels) "
                       f"with no empty axis, got {shape}")
    if name == "y" and (len(shape) not in (1, 2) or 0 in shape):
        raise ApiError(422, "y", f"must be (n,) or (n, c) with no empty axis, got {shape}")
    if shape[0] > limits.max_n:
        raise ApiError(422, name, f"has {_fmt(shape[0])} rows, more than the limit "
                       f"{limits.max_n}")
    features = math.prod(shape[1:])
    if features > limits.max_features:
        raise ApiError(422, name, f"has {_fmt(features)} values per row, more than the limit "
                       f"{limits.max_features}")
    if h.nbytes > limits.max_dataset_bytes:
        raise ApiError(422, name, f"holds {_fmt(h.nbytes)} bytes, more than the limit "
                       f"{limits.max_dataset_bytes}")


def _fmt(v: int) -> str:
    # a product of header ints can have more digits than int -> str allows (4300)
    return str(v) if v < 10**18 else f"about 2**{v.bit_length() - 1}"


def _memmap(path: Path, h: NpyHeader) -> np.ndarray:
    return np.memmap(path, dtype=h.dtype, mode="r", offset=h.offset, shape=h.shape,
                     order="F" if h.fortran_order else "C")


def _load_npy(path: Path, name: str, limits: Settings) -> tuple[np.ndarray, NpyHeader]:
    """Memory-mapped array of a staged ``.npy``, its header checked and its data exactly as
    long as the header implies (truncated or trailing bytes: 422)."""
    with path.open("rb") as f:
        head = f.read(MAX_PREFIX)
        size = os.fstat(f.fileno()).st_size
    h = parse_header(head, name)
    assert h is not None
    check_header(h, name, limits)
    if size - h.offset != h.nbytes:
        raise ApiError(422, name, f"malformed .npy: the header implies {h.nbytes} data bytes, "
                       f"the file holds {size - h.offset}")
    try:
        return _memmap(path, h), h
    except (ValueError, OSError) as e:
        raise ApiError(422, name, f"malformed .npy: {e}") from None


# staging -----------------------------------------------------------------------------------

async def stage(request: Request, staging: Path, limits: Settings) -> Staged:
    """Stream the request body into ``staging`` (its size and stalls are bounded by
    :class:`service.bodies.BodyLimits` before this reads a byte).

    A raw ``.npy`` body is checked as soon as its header has arrived (:func:`check_header`,
    and its data length against Content-Length when given): 422 before the rest is read.
    """
    length = request.headers.get("content-length")
    declared = int(length) if length is not None and length.isdigit() else None
    st = Staged(staging / f"up-{uuid.uuid4().hex}")
    st.dir.mkdir(parents=True)
    try:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            await _stage_multipart(request, st)
        else:
            await _stage_body(request, st, limits, declared)
        return st
    except BaseException:
        st.cleanup()
        raise


async def _stage_body(request: Request, st: Staged, limits: Settings,
                      declared: int | None) -> None:
    h = hashlib.sha256()
    path = st.dir / "body"
    head, watching = bytearray(), True
    with path.open("wb") as f:
        async for chunk in request.stream():
            h.update(chunk)
            f.write(chunk)
            if watching:
                head += chunk[:MAX_PREFIX - len(head)]  # parsed in place: O(1) till complete
                watching = _watch_npy(head, limits, declared, final=False)
        if watching:
            _watch_npy(head, limits, declared, final=True)
    st.files["body"], st.sha256 = path, h.hexdigest()


def _watch_npy(head: bytearray, limits: Settings, declared: int | None, final: bool) -> bool:
    """Check the start of a raw body if it is an ``.npy``; true while more bytes are needed."""
    if (len(head) < 6 and final) or head[:6] != NPY_MAGIC[:min(6, len(head))]:
        return False  # not an .npy: arrays() tells what it is
    h = parse_header(head, "x", final=final)
    if h is None:
        return True
    check_header(h, "x", limits)
    if declared is not None and declared - h.offset != h.nbytes:
        raise ApiError(422, "x", f"malformed .npy: the header implies {h.nbytes} data bytes, "
                       f"the body holds {declared - h.offset}")
    return False


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


# .npz --------------------------------------------------------------------------------------

def _zip_directory(f: BinaryIO, size: int, bad: _Bad) -> tuple[int, int]:
    """(offset, bytes) of the central directory, read from the end records alone (the zip64
    ones too, when present), refusing more than ``MAX_ZIP_ENTRIES`` entries or a directory
    past ``MAX_ZIP_DIR`` bytes. The record found is the one ``zipfile`` would use: it must end
    the file exactly (after its comment)."""
    tail_at = max(0, size - _EOCD.size - 0xFFFF)
    f.seek(tail_at)
    tail = f.read()
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or len(tail) - pos < _EOCD.size:
        raise bad("no end of central directory record (not a zip file?)")
    _, disk, cd_disk, n_disk, n, cd_size, cd_offset, comment = _EOCD.unpack_from(tail, pos)
    if pos + _EOCD.size + comment != len(tail):
        raise bad("the end of central directory record does not end the file")
    if disk or cd_disk or n_disk != n:
        raise bad("multi-disk archives are not supported")
    eocd_at = tail_at + pos
    dir_end = eocd_at
    locator = b""
    if eocd_at >= _ZIP64_LOCATOR.size + _ZIP64_EOCD.size:
        f.seek(eocd_at - _ZIP64_LOCATOR.size)
        locator = f.read(_ZIP64_LOCATOR.size)
    if locator[:4] == b"PK\x06\x07":
        _, disk, rec_at, disks = _ZIP64_LOCATOR.unpack(locator)
        dir_end = eocd_at - _ZIP64_LOCATOR.size - _ZIP64_EOCD.size
        f.seek(dir_end)
        rec = f.read(_ZIP64_EOCD.size)
        if disk or disks > 1 or rec_at != dir_end or rec[:4] != b"PK\x06\x06":
            raise bad("inconsistent zip64 end of central directory records")
        (_, _, _, _, disk, cd_disk, n_disk64, n64, cd_size64,
         cd_offset64) = _ZIP64_EOCD.unpack(rec)
        if disk or cd_disk or n_disk64 != n64:
            raise bad("multi-disk archives are not supported")
        # zipfile reads the zip64 values; the 32-bit ones must agree or be placeholders
        for v32, v64, sentinel in ((n, n64, 0xFFFF), (cd_size, cd_size64, 0xFFFFFFFF),
                                   (cd_offset, cd_offset64, 0xFFFFFFFF)):
            if v32 not in (v64, sentinel):
                raise bad("the zip64 end record contradicts the end record")
        n, cd_size, cd_offset = n64, cd_size64, cd_offset64
    elif 0xFFFF == n or 0xFFFFFFFF in (cd_size, cd_offset):
        raise bad("zip64 placeholders in the end record but no zip64 record")
    if n > MAX_ZIP_ENTRIES:
        raise bad(f"{n} entries: an .npz holds at most 'x' and 'y'")
    if cd_size > MAX_ZIP_DIR:
        raise bad(f"a central directory of {cd_size} bytes, more than {MAX_ZIP_DIR}")
    if cd_offset + cd_size != dir_end:
        raise bad("the central directory is not where its end record says")
    return cd_offset, cd_size


@dataclass
class _Member:
    key: str
    info: zipfile.ZipInfo
    data_at: int  # first byte of the compressed data


def _zip_members(f: BinaryIO, path: Path, cd_offset: int, limits: Settings,
                 bad: _Bad) -> list[_Member]:
    """x (and y) of a bounded directory, judged from the directory and local headers alone."""
    try:  # the directory is at most MAX_ZIP_DIR bytes: zipfile parses it in microseconds
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except Exception as e:  # whatever a hostile directory makes zipfile raise
        raise bad(f"{type(e).__name__}: {e}"[:300]) from None
    if len(infos) > MAX_ZIP_ENTRIES:
        raise bad(f"{len(infos)} entries: an .npz holds at most 'x' and 'y'")
    members: dict[str, _Member] = {}
    for info in infos:
        name = info.orig_filename
        key = NPZ_NAMES.get(name)
        if key is None or info.filename != name:
            raise bad(f"an .npz must hold array 'x' and optionally 'y' (as x.npy, y.npy); it "
                      f"holds {name!r}"[:300])
        if key in members:
            raise bad(f"array {key!r} appears twice")
        if info.flag_bits & 0x41:
            raise bad(f"{name} is encrypted")
        if info.compress_type not in ZIP_METHODS:
            raise bad(f"{name}: compression method {info.compress_type} is not one of "
                      "stored, deflate, bzip2, lzma")
        if info.file_size > limits.max_dataset_bytes:
            raise bad(f"{name} declares {info.file_size} bytes, more than the limit "
                      f"{limits.max_dataset_bytes}")
        if info.file_size > RATIO_FREE_BYTES and \
                info.file_size > limits.max_compression_ratio * info.compress_size:
            raise bad(f"{name} declares {info.file_size} bytes from {info.compress_size}: a "
                      f"ratio above the limit {limits.max_compression_ratio:g}")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise bad(f"{name} is stored but its sizes differ")
        f.seek(info.header_offset)
        local = f.read(_LOCAL.size)
        if len(local) != _LOCAL.size or local[:4] != ZIP_MAGIC:
            raise bad(f"{name}: bad local header")
        name_len, extra_len = _LOCAL.unpack(local)[-2:]
        encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
        if f.read(name_len) != name.encode(encoding):
            raise bad(f"{name}: the local header names another file")
        members[key] = _Member(key, info, info.header_offset + _LOCAL.size + name_len
                               + extra_len)
    if "x" not in members:
        raise bad(f"an .npz must hold array 'x' and optionally 'y'; it holds "
                  f"{sorted(i.orig_filename for i in infos)}"[:300])
    total = sum(m.info.file_size for m in members.values())
    if total > limits.max_dataset_bytes:
        raise bad(f"x and y declare {total} bytes, more than the limit "
                  f"{limits.max_dataset_bytes}")
    # each member's bytes lie before the directory and apart from the other's
    spans = sorted((m.info.header_offset, m.data_at + m.info.compress_size, m.info.filename)
                   for m in members.values())
    for i, (_, end, name) in enumerate(spans):
        if end > (spans[i + 1][0] if i + 1 < len(spans) else cd_offset):
            raise bad(f"{name}: its data overlaps another record")
    return [members[k] for k in ("x", "y") if k in members]


class _Inflater:
    """The decompressed bytes of one member, straight from its raw stream. Every call of a
    decompressor is bounded in output (zipfile's bzip2/lzma readers are not: 4 KiB of bzip2
    may inflate to gigabytes in one call), and no call may return more than one byte past
    the declared size: an excess shows without being produced."""

    def __init__(self, f: BinaryIO, m: _Member, bad: _Bad) -> None:
        self.f, self.info, self.bad = f, m.info, bad
        self.left_in = m.info.compress_size
        self.left = m.info.file_size  # may go to -1: one byte too many
        self.crc = 0
        self.done = False
        f.seek(m.data_at)
        method = m.info.compress_type
        self.d: Any = None
        if method == zipfile.ZIP_DEFLATED:
            self.d = zlib.decompressobj(-15)
        elif method == zipfile.ZIP_BZIP2:
            self.d = bz2.BZ2Decompressor()
        elif method == zipfile.ZIP_LZMA:
            self.d = self._lzma()

    def _raw(self, n: int) -> bytes:
        data = self.f.read(min(n, self.left_in))
        self.left_in -= len(data)
        return data

    def _lzma(self) -> Any:
        # zip's LZMA: version (2 bytes), properties size (2), properties (5), raw LZMA1 data
        head = self._raw(4)
        if len(head) != 4 or int.from_bytes(head[2:], "little") != 5:
            raise self.bad(f"{self.info.filename}: bad LZMA header")
        props = self._raw(5)
        if len(props) != 5 or props[0] >= 9 * 5 * 5:
            raise self.bad(f"{self.info.filename}: bad LZMA properties")
        lc, rest = props[0] % 9, props[0] // 9
        # the decoder allocates its whole dictionary: never more than the output needs
        dict_size = min(int.from_bytes(props[1:], "little"), max(4096, self.info.file_size))
        if dict_size > MAX_LZMA_DICT:
            raise self.bad(f"{self.info.filename}: an LZMA dictionary of {dict_size} bytes, "
                           f"more than {MAX_LZMA_DICT}")
        return lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[{
            "id": lzma.FILTER_LZMA1, "lc": lc, "lp": rest % 5, "pb": rest // 5,
            "dict_size": dict_size}])

    def _step(self, n: int) -> bytes:
        d = self.d
        if d is None:  # stored
            out = self._raw(n)
            self.done = not out
            return out
        if d.eof:
            self.done = True
            return b""
        if isinstance(d, bz2.BZ2Decompressor | lzma.LZMADecompressor):
            hungry = d.needs_input
            data = self._raw(1 << 16) if hungry else b""
            if hungry and not data:
                self.done = True  # input ends before the stream does
                return b""
            out = d.decompress(data, n)
            self.done = not out and not hungry  # output owed but none came: give up
            return out
        data = d.unconsumed_tail or self._raw(1 << 16)
        out = d.decompress(data, n)
        if not out and not data:
            self.done = True
        return out

    def read(self, n: int) -> bytes:
        """Up to ``n`` more bytes (at least one unless at the end); 422 once the member
        inflates past its declared size."""
        n = max(1, min(n, self.left + 1))
        out = b""
        try:
            while not out and not self.done:
                out = self._step(n)
        except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError) as e:
            raise self.bad(f"{self.info.filename}: corrupt compressed data ({e})") from None
        self.left -= len(out)
        if self.left < 0:
            raise self.bad(f"{self.info.filename} inflates past its declared size of "
                           f"{self.info.file_size} bytes")
        self.crc = zlib.crc32(out, self.crc)
        return out

    def finish(self) -> None:
        """422 unless the member ended at its declared size with its CRC-32."""
        if self.left > 0:
            raise self.bad(f"{self.info.filename} ends {self.left} bytes short of its declared "
                           f"size of {self.info.file_size}")
        if self.crc != self.info.CRC:
            raise self.bad(f"{self.info.filename}: CRC-32 mismatch")


def _extract_npz(path: Path, st: Staged, field_name: str,
                 limits: Settings) -> dict[str, np.ndarray]:
    def bad(reason: str) -> ApiError:
        return ApiError(422, field_name, f"malformed .npz: {reason}")

    out = {}
    with path.open("rb") as f:
        cd_offset, _ = _zip_directory(f, os.fstat(f.fileno()).st_size, bad)
        members = _zip_members(f, path, cd_offset, limits, bad)
        for m in members:
            src = _Inflater(f, m, bad)
            head = bytearray()
            while (h := parse_header(head, m.key, final=False)) is None:
                chunk = src.read(MAX_PREFIX - len(head))
                if not chunk:
                    parse_header(head, m.key)  # raises: the member ends inside its header
                head += chunk
            check_header(h, m.key, limits)
            if m.info.file_size - h.offset != h.nbytes:
                raise ApiError(422, m.key, f"malformed .npy: the header implies {h.nbytes} "
                               f"data bytes, the .npz member declares "
                               f"{m.info.file_size - h.offset}")
            dst = st.dir / f"npz-{m.key}.npy"
            with dst.open("wb") as g:
                g.write(head)
                while chunk := src.read(CHUNK):
                    g.write(chunk)
            src.finish()
            out[m.key] = _memmap(dst, h)
    return out


def arrays(st: Staged, limits: Settings) -> dict[str, np.ndarray]:
    """Memory-mapped ``x`` (and ``y``) of a staged upload, every header within ``limits``."""
    if "body" in st.files:
        path = st.files["body"]
        with path.open("rb") as f:
            magic = f.read(6)
        if magic.startswith(ZIP_MAGIC):
            return _extract_npz(path, st, "body", limits)
        if magic == NPY_MAGIC:
            return {"x": _load_npy(path, "x", limits)[0]}
        raise ApiError(422, "body", "must be a .npy or .npz file (or multipart/form-data)")
    if "file" in st.files:
        return _extract_npz(st.files["file"], st, "file", limits)
    loaded = {k: _load_npy(st.files[k], k, limits) for k in ("x", "y") if k in st.files}
    total = sum(h.nbytes for _, h in loaded.values())
    if total > limits.max_dataset_bytes:
        raise ApiError(422, "y", f"x and y hold {total} bytes, more than the limit "
                       f"{limits.max_dataset_bytes}")
    return {k: a for k, (a, _) in loaded.items()}


def check_arrays(x: np.ndarray, y: np.ndarray | None, limits: Settings,
                 block_bytes: int = 1 << 24) -> None:
    """422 unless x is (n, features) / (n, *spatial, channels) real and finite, n <=
    ``limits.max_n``, and y (if any) has n rows of real finite values."""
    if x.ndim < 2 or any(s <= 0 for s in x.shape):
        raise ApiError(422, "x", "must have shape (n, features) or (n, *spatial, channels) "
                       f"with no empty axis, got {list(x.shape)}")
    if x.shape[0] > limits.max_n:
        raise ApiError(422, "x", f"has {x.shape[0]} rows, more than the limit {limits.max_n}")
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
