"""Hostile and valid dataset uploads against the real service: every payload of
``payloads.ALL`` is a fast 4xx naming the field, leaves nothing in staging and no memory
behind; valid compressed ``.npz`` files still round-trip. Plus the header parser alone."""

from __future__ import annotations

import bz2
import hashlib
import io
import lzma
import socket
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.config import Settings
from service.errors import ApiError
from service.uploads import MAX_HEADER, check_header, parse_header
from workers.store import sha256

from . import payloads as P

NPZ = sorted(n for n in P.ALL if n.startswith("npz_"))
NPY = sorted(n for n in P.ALL if n.startswith("npy_"))
LIMITS = Settings(max_n=P.MAX_N)


@pytest.fixture(scope="module")
def bodies() -> dict[str, bytes]:
    return {name: build() for name, build in P.ALL.items()}


def _staging(service) -> Path:
    # as Settings.staging_dir(): beside the SQLite file, else the system temp dir
    if service.db.startswith("sqlite:///"):
        return service.root / "staging"
    return Path(tempfile.gettempdir()) / "ntk-staging"


def _post(service, **kwargs) -> tuple[httpx.Response, float]:
    t = time.perf_counter()
    r = httpx.post(f"{service.url}/v1/datasets", timeout=30,
                   headers={"Authorization": f"Bearer {service.key_a}"}, **kwargs)
    return r, time.perf_counter() - t


def _refused(service, r: httpx.Response, seconds: float, status: int, field: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["field"] == field, r.text
    assert r.json()["detail"].startswith(f"{field}: "), r.text
    assert seconds < 1.0, f"answered after {seconds:.2f} s"
    staging = _staging(service)
    assert staging.is_dir() and not list(staging.iterdir())


def _chunks(body: bytes, size: int = 1 << 16):
    for i in range(0, len(body), size):
        yield body[i:i + size]


# the payloads themselves ------------------------------------------------------------------

def test_payloads_are_cheap_and_fit_the_upload_limit():
    assert set(P.ALL) == set(P.EXPECTED)
    for name, build in P.ALL.items():
        t = time.perf_counter()
        body = build()
        assert time.perf_counter() - t < 2.0, name  # the attack suite builds each < 0.5 s
        assert isinstance(body, bytes) and 0 < len(body) < 4 << 20, name


def test_crc32_of_zeros_matches_zlib():
    for crc, n in [(0, 0), (0, 1), (12345, 7), (zlib.crc32(b"abc"), 100_003)]:
        assert P.crc32_zeros(crc, n) == zlib.crc32(bytes(n), crc)


def _inflate(method: int, data: bytes):
    """Chunks of a raw member stream, decoded by the standard library alone, bounded."""
    if method == zipfile.ZIP_DEFLATED:
        d = zlib.decompressobj(-15)
        while data and not d.eof:
            yield d.decompress(data, 1 << 22)
            data = d.unconsumed_tail
        assert d.eof
        return
    if method == zipfile.ZIP_BZIP2:
        d = bz2.BZ2Decompressor()
    else:
        assert data[:4] == b"\x09\x04\x05\x00"
        b, dict_size = data[4], int.from_bytes(data[5:9], "little")
        d = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[{
            "id": lzma.FILTER_LZMA1, "lc": b % 9, "lp": b // 9 % 5, "pb": b // 45,
            "dict_size": dict_size}])
        data = data[9:]
    while not d.eof:
        yield d.decompress(data if d.needs_input else b"", 1 << 22)
        data = b""


@pytest.mark.parametrize("entry", [
    lambda: P.deflate_zeros(P.bomb_header(64 << 20), 64 << 20),
    lambda: P.Entry("x.npy", P.bzip2_zeros(P.bomb_header(64 << 20), 64 << 20),
                    len(P.bomb_header(64 << 20)) + (64 << 20),
                    P.crc32_zeros(zlib.crc32(P.bomb_header(64 << 20)), 64 << 20),
                    zipfile.ZIP_BZIP2),
    lambda: P.lzma_zeros(P.bomb_header, 64 << 20),
], ids=["deflate", "bzip2", "lzma"])
def test_bomb_streams_are_valid(entry):
    """The bombs' construction, at 64 MiB: the stream decodes (by the standard library) to
    its declared size of a numpy header and zeros, with its declared CRC-32."""
    e = entry()
    n, crc, head = 0, 0, b""
    for chunk in _inflate(e.method, e.data):
        if len(head) < 128:
            head += chunk[:128]
        elif chunk.count(0) != len(chunk):
            raise AssertionError("non-zero data after the header")
        n, crc = n + len(chunk), zlib.crc32(chunk, crc)
        assert n <= e.file_size
    h = parse_header(head, "x", final=False)
    assert h is not None and h.dtype == np.float32 and h.offset + h.nbytes == n == e.file_size
    assert n >= 64 << 20 and crc == e.crc


@pytest.mark.parametrize("name", ["npz_deflate_bomb", "npz_bzip2_bomb", "npz_lzma_bomb"])
def test_bombs_declare_gigabytes(bodies, name):
    with zipfile.ZipFile(io.BytesIO(bodies[name])) as z:  # the directory only
        [info] = z.infolist()
    assert info.filename == "x.npy" and info.file_size >= 1 << 30
    assert info.file_size / info.compress_size > 500


# the service refuses them -----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(P.ALL))
def test_hostile_raw_body(service, bodies, name):
    status, field = P.EXPECTED[name]
    r, seconds = _post(service, content=bodies[name])
    _refused(service, r, seconds, status, field)


@pytest.mark.parametrize("name", NPY)
def test_hostile_raw_npy_without_content_length(service, bodies, name):
    """Chunked: the early check cannot compare with Content-Length; the staged file is."""
    status, field = P.EXPECTED[name]
    r, seconds = _post(service, content=_chunks(bodies[name], 64))
    _refused(service, r, seconds, status, field)


@pytest.mark.parametrize("name", NPZ)
def test_hostile_npz_file_part(service, bodies, name):
    status, field = P.EXPECTED[name]
    r, seconds = _post(service, files={"file": ("d.npz", bodies[name])})
    _refused(service, r, seconds, status, "file" if field == "body" else field)


@pytest.mark.parametrize("name", NPY)
def test_hostile_npy_parts(service, bodies, name):
    status, field = P.EXPECTED[name]
    assert field == "x"
    r, seconds = _post(service, files={"x": ("x.npy", bodies[name])})
    _refused(service, r, seconds, status, "x")
    r, seconds = _post(service, files={"x": ("x.npy", P.npy(np.ones((4, 3)))),
                                       "y": ("y.npy", bodies[name])})
    _refused(service, r, seconds, status, "y")


@pytest.mark.parametrize("header,reason", [
    (P.npy_header((10**6, 3), "<f8"), "rows"),
    (P.npy_header((4, 3), "<f8"), "the body holds"),  # against Content-Length
])
def test_raw_npy_refused_before_the_rest_of_the_body(service, header, reason):
    """Only the header is sent of a body declared 3 MB long: the answer comes anyway."""
    host, port = service.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        t = time.perf_counter()
        s.sendall(f"POST /v1/datasets HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer "
                  f"{service.key_a}\r\nContent-Type: application/octet-stream\r\n"
                  f"Content-Length: {3_000_000}\r\n\r\n".encode() + header)
        answer = b""
        while b"}" not in answer:
            chunk = s.recv(65536)
            assert chunk, answer
            answer += chunk
        seconds = time.perf_counter() - t
    assert answer.startswith(b"HTTP/1.1 422"), answer
    assert b'"field":"x"' in answer and reason.encode() in answer, answer
    assert seconds < 1.0
    assert not list(_staging(service).iterdir())


# valid compressed uploads still work ------------------------------------------------------

def _npz(compression: int, **arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, a in arrays.items():
            z.writestr(f"{name}.npy", P.npy(a))
    return buf.getvalue()


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED,
                                         zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA],
                         ids=["stored", "deflate", "bzip2", "lzma"])
def test_compressed_npz_round_trips(service, compression):
    rng = np.random.default_rng(compression)
    x = rng.standard_normal((300, 7)).astype(np.float32)
    y = rng.integers(0, 5, 300)
    body = _npz(compression, x=x, y=y)
    for kwargs in ({"content": body}, {"files": {"file": ("d.npz", body)}}):
        r, _ = _post(service, **kwargs)
        assert r.status_code == 201, r.text
        out = r.json()
        assert out["shape"] == [300, 7] and out["dtype"] == "float32"
        assert out["y_shape"] == [300] and out["n"] == 300
        assert out["x_sha256"] == sha256(x)
        assert out["sha256"] == hashlib.sha256(body).hexdigest()
    assert not list(_staging(service).iterdir())


def test_savez_compressed_and_chunked_npy_still_accepted(service):
    x = np.arange(60, dtype=np.float64).reshape(20, 3)
    buf = io.BytesIO()
    np.savez_compressed(buf, x=x, y=np.arange(20) % 2)
    r, _ = _post(service, content=buf.getvalue())
    assert r.status_code == 201 and r.json()["x_sha256"] == sha256(x), r.text
    xf = np.asfortranarray(np.ones((20, 4, 3), dtype=">f8") * 2)
    r, _ = _post(service, content=_chunks(P.npy(xf), 100))
    assert r.status_code == 201 and r.json()["shape"] == [20, 4, 3], r.text
    assert r.json()["x_sha256"] == sha256(np.ascontiguousarray(xf))


# the header parser alone ------------------------------------------------------------------

@pytest.mark.parametrize("a", [np.ones((3, 4), np.float32), np.ones((2, 3, 5), ">i8"),
                               np.asfortranarray(np.ones((4, 2))), np.zeros(7, np.uint8)])
def test_parse_header_reads_what_numpy_writes(a):
    body = P.npy(a)
    h = parse_header(body, "x")
    assert h is not None
    assert (h.shape, h.dtype, h.offset + h.nbytes) == (a.shape, a.dtype, len(body))
    assert h.fortran_order == (a.ndim > 1 and a.flags.f_contiguous and not a.flags.c_contiguous)
    for cut in (0, 5, 7, 9, h.offset - 1):  # any prefix: "more, please"
        assert parse_header(body[:cut], "x", final=False) is None
        with pytest.raises(ApiError):
            parse_header(body[:cut], "x")


@pytest.mark.parametrize("version", [(2, 0), (3, 0)])
def test_parse_header_versions(version):
    text = "{'descr': '<f8', 'fortran_order': False, 'shape': (4, 3), }"
    h = parse_header(P.raw_header(text, version, pad=True) + bytes(96), "y")
    assert h is not None and h.shape == (4, 3) and h.offset % 64 == 0


@pytest.mark.parametrize("name", NPY)
def test_parse_and_check_refuse_the_npy_payloads(bodies, name):
    with pytest.raises(ApiError) as e:
        h = parse_header(bodies[name][:12 + MAX_HEADER], "x", final=False)
        if h is not None:
            check_header(h, "x", LIMITS)
            if h.offset + h.nbytes != len(bodies[name]):
                raise ApiError(422, "x", "size")
        else:
            parse_header(bodies[name], "x")
    assert (e.value.status, e.value.field) == P.EXPECTED[name]


def test_header_length_refused_from_the_length_field():
    t = time.perf_counter()
    with pytest.raises(ApiError, match="more than 65536"):
        parse_header(b"\x93NUMPY\x02\x00" + (2**32 - 1).to_bytes(4, "little"), "x",
                     final=False)
    assert time.perf_counter() - t < 0.01


@pytest.mark.parametrize("shape,field,reason", [
    ((2000, 3), None, None),
    ((2001, 3), "x", "rows"),
    ((10, 2**20), None, None),
    ((10, 2**20 + 1), "x", "values per row"),
    ((10, 2**10, 2**10, 2), "x", "values per row"),
    ((5,), "x", "shape"),
    ((5, 0), "x", "shape"),
])
def test_check_header_limits(shape, field, reason):
    h = parse_header(P.npy_header(shape), "x")
    assert h is not None
    if field is None:
        check_header(h, "x", LIMITS)
        return
    with pytest.raises(ApiError, match=reason) as e:
        check_header(h, "x", LIMITS)
    assert e.value.field == field


def test_check_header_bytes_and_y():
    small = Settings(max_n=100, max_dataset_bytes=1000)
    with pytest.raises(ApiError, match="bytes") as e:
        check_header(parse_header(P.npy_header((100, 3), "<f8"), "x"), "x", small)
    assert e.value.field == "x"
    check_header(parse_header(P.npy_header((100,), "<i8"), "y"), "y", small)
    with pytest.raises(ApiError) as e:
        check_header(parse_header(P.npy_header((10, 2, 2), "<i8"), "y"), "y", small)
    assert e.value.field == "y"
