"""Hostile dataset uploads, generated on demand (nothing committed), each cheap to build.

``ALL`` maps a name to a builder returning the body's ``bytes``; ``EXPECTED`` maps it to the
``(status, field)`` the service must answer when it is POSTed as the raw body of
``/v1/datasets`` (as a multipart ``file`` part, an ``.npz``'s ``"body"`` becomes ``"file"``;
as an ``x`` or ``y`` part an ``.npy``'s ``"x"`` becomes the part's name). Limits assumed are
the test service's (``NTK_MAX_N=2000``, ``NTK_MAX_UPLOAD_BYTES`` = 4 MiB) and the defaults of
the rest (``max_features`` 2**20, ``max_dataset_bytes`` 4 GiB, ``max_compression_ratio`` 100).

The bombs are valid ``.npz`` files whose ``x`` inflates to gigabytes of float32 zeros. Building
them by compressing that many zeros would take seconds to minutes, so each compressed stream
is put together from a small compressed unit repeated: deflate blocks ending in a full flush,
whole bzip2 blocks (with the stream CRC recomputed), the periodic middle of an LZMA stream.
The CRC-32 of the zeros comes from zlib's GF(2) "append zeros" operator, not from hashing them.
"""

from __future__ import annotations

import bz2
import functools
import io
import lzma
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

GIB = 1 << 30
MAX_N = 2000  # the test service's NTK_MAX_N


# building blocks ---------------------------------------------------------------------------

def npy_header(shape: tuple[int, ...], descr: str = "<f4", fortran: bool = False,
               version: tuple[int, int] = (1, 0)) -> bytes:
    """An ``.npy`` header as numpy writes it (dict padded with spaces to a multiple of 64
    bytes, newline-terminated) for data of ``shape`` and dtype string ``descr``."""
    text = f"{{'descr': {descr!r}, 'fortran_order': {fortran}, 'shape': {shape!r}, }}"
    return raw_header(text, version, pad=True)


def raw_header(text: str, version: tuple[int, int] = (1, 0), pad: bool = False,
               length: int | None = None) -> bytes:
    """Magic, version, header length (``length`` if given, else the true one) and ``text``
    (padded numpy-style when ``pad``; written as is otherwise)."""
    size_len = 2 if version[0] == 1 else 4
    if pad:
        total = 6 + 2 + size_len + len(text) + 1
        text = text + " " * (-total % 64) + "\n"
    body = text.encode("latin1")
    n = len(body) if length is None else length
    return b"\x93NUMPY" + bytes(version) + n.to_bytes(size_len, "little") + body


def npy(a: np.ndarray) -> bytes:
    """``np.save`` bytes of ``a`` (pickles object arrays: the service must never unpickle)."""
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=True)
    return buf.getvalue()


def _gf2_times(mat: list[int], vec: int) -> int:
    s, i = 0, 0
    while vec:
        if vec & 1:
            s ^= mat[i]
        vec >>= 1
        i += 1
    return s


def crc32_zeros(crc: int, n: int) -> int:
    """``zlib.crc32(bytes(n), crc)`` in O(log n) (zlib's crc32_combine, operator part)."""
    if n <= 0:
        return crc
    reg = crc ^ 0xFFFFFFFF
    odd = [0xEDB88320] + [1 << k for k in range(31)]  # one zero bit
    even = [_gf2_times(odd, odd[k]) for k in range(32)]  # two
    odd = [_gf2_times(even, even[k]) for k in range(32)]  # four
    while True:  # square up: 1, 2, 4, ... zero bytes, applied per bit of n
        even = [_gf2_times(odd, odd[k]) for k in range(32)]
        if n & 1:
            reg = _gf2_times(even, reg)
        n >>= 1
        if not n:
            break
        odd = [_gf2_times(even, even[k]) for k in range(32)]
        if n & 1:
            reg = _gf2_times(odd, reg)
        n >>= 1
        if not n:
            break
    return reg ^ 0xFFFFFFFF


@dataclass
class Entry:
    """One zip member as written: ``data`` is already compressed by ``method``; the central
    directory may be made to lie through the ``cd_*`` fields."""

    name: str
    data: bytes
    file_size: int
    crc: int
    method: int = zipfile.ZIP_STORED
    flags: int = 0
    cd_extra: bytes = b""
    cd_file_size: int | None = None
    cd_compress_size: int | None = None
    header_offset: int | None = None  # where the directory says the local header is


def stored(name: str, data: bytes) -> Entry:
    """An uncompressed member holding ``data``."""
    return Entry(name, data, len(data), zlib.crc32(data))


def deflated(name: str, data: bytes) -> Entry:
    """A deflate member holding ``data``."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return Entry(name, c.compress(data) + c.flush(), len(data), zlib.crc32(data),
                 zipfile.ZIP_DEFLATED)


def write_zip(entries: list[Entry], zip64_entries: int | None = None,
              trailer: bytes = b"") -> bytes:
    """A zip of ``entries`` (local headers, data, central directory, end record; then
    ``trailer``). ``zip64_entries`` adds zip64 end records claiming that many entries."""
    out, central = bytearray(), bytearray()
    for e in entries:
        name = e.name.encode()
        version = {zipfile.ZIP_BZIP2: 46, zipfile.ZIP_LZMA: 63}.get(e.method, 20)
        offset = len(out)
        out += struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", version, 0, e.flags, e.method, 0,
                           0x21, e.crc, len(e.data), e.file_size, len(name), 0) + name + e.data
        central += struct.pack(
            "<4s4B4HL2L5H2L", b"PK\x01\x02", version, 3, version, 0, e.flags, e.method, 0,
            0x21, e.crc, len(e.data) if e.cd_compress_size is None else e.cd_compress_size,
            e.file_size if e.cd_file_size is None else e.cd_file_size, len(name),
            len(e.cd_extra), 0, 0, 0, 0,
            offset if e.header_offset is None else e.header_offset) + name + e.cd_extra
    cd_offset = len(out)
    out += central
    n = len(entries)
    if zip64_entries is not None:
        record = len(out)
        out += struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, zip64_entries,
                           zip64_entries, len(central), cd_offset)
        out += struct.pack("<4sLQL", b"PK\x06\x07", 0, record, 1)
        out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF,
                           0xFFFFFFFF, 0)
    else:
        out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, n, n, len(central), cd_offset, 0)
    return bytes(out + trailer)


def bomb_header(nbytes: int) -> bytes:
    """The header of float32 x of (1024, nbytes / 4096), ``nbytes`` a multiple of 4096."""
    assert nbytes % 4096 == 0
    return npy_header((1024, nbytes // 4096))


# deflate: units that end in a full flush (byte-aligned, no back-reference out of the unit)

def deflate_zeros(header: bytes, zeros: int, unit: int = 1 << 20) -> Entry:
    """Member ``x.npy``: ``header`` then ``zeros`` zero bytes (a multiple of ``unit``), as a
    raw deflate stream built from one compressed unit of zeros repeated."""
    assert zeros % unit == 0
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(unit)) + c.flush(zlib.Z_FULL_FLUSH)
    data = head + block * (zeros // unit) + b"\x03\x00"  # b"\x03\x00": empty final block
    return Entry("x.npy", data, len(header) + zeros,
                 crc32_zeros(zlib.crc32(header), zeros), zipfile.ZIP_DEFLATED)


# bzip2: one stream of whole blocks; blocks are bit-aligned, the stream CRC combines theirs

_BZ_BLOCK, _BZ_END = 0x314159265359, 0x177245385090


def _bz2_block(data: bytes) -> tuple[int, int, int]:
    """(bits, bit count, block CRC) of the one block ``bz2.compress(data)`` writes."""
    s = bz2.compress(data, 9)
    v, total = int.from_bytes(s, "big"), 8 * len(s)
    for pad in range(8):  # the stream: "BZh9", block, end magic (48 bits), CRC (32), pad
        end = total - pad
        crc = (v >> pad) & 0xFFFFFFFF
        if (v >> (pad + 32)) & ((1 << 48) - 1) == _BZ_END and not v & ((1 << pad) - 1):
            nbits = end - 80 - 32
            block = (v >> (total - 32 - nbits)) & ((1 << nbits) - 1)
            if block >> (nbits - 48) == _BZ_BLOCK and (block >> (nbits - 80)) & 0xFFFFFFFF \
                    == crc:
                return block, nbits, crc
    raise RuntimeError("bz2.compress wrote more than one block")


def _bz2_stream(blocks: list[tuple[int, int, int]]) -> bytes:
    acc, n, combined = 0, 0, 0
    for bits, nbits, crc in blocks:
        acc, n = (acc << nbits) | bits, n + nbits
        combined = (((combined << 1) | (combined >> 31)) & 0xFFFFFFFF) ^ crc
    acc, n = (((acc << 48) | _BZ_END) << 32) | combined, n + 80
    acc, n = acc << (-n % 8), n + (-n % 8)
    return b"BZh9" + acc.to_bytes(n // 8, "big")


@functools.lru_cache
def _bz2_zero_block(unit: int) -> tuple[int, int, int]:
    return _bz2_block(bytes(unit))


def bzip2_zeros(prefix: bytes, zeros: int, unit: int = 8 << 20) -> bytes:
    """A bzip2 stream of ``prefix`` then ``zeros`` zero bytes (a multiple of ``unit``, one
    block each)."""
    assert zeros % unit == 0
    return _bz2_stream([_bz2_block(prefix)] + [_bz2_zero_block(unit)] * (zeros // unit))


# lzma: the middle of an LZMA stream of zeros is periodic; repeat whole periods

_LZMA = {"id": lzma.FILTER_LZMA1, "preset": 6, "dict_size": 1 << 20, "lc": 3, "lp": 0,
         "pb": 2}


def _lzma(data: bytes) -> bytes:
    c = lzma.LZMACompressor(lzma.FORMAT_RAW, filters=[_LZMA])
    return c.compress(data) + c.flush()


def _unlzma(data: bytes) -> tuple[bytes, bool]:
    d = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[_LZMA])
    try:
        return d.decompress(data), d.eof
    except lzma.LZMAError:
        return b"", False


def _periodic(stream: bytes, periods: range) -> Iterator[tuple[int, int]]:
    """(position, p) pairs, smallest p first, with ``stream`` repeating a p-byte piece three
    times from position - p on: a place inside the steady state of the coder."""
    n = len(stream)
    middle_first = sorted(range(0, n, 8), key=lambda pos: abs(2 * pos - n))
    for p in periods:
        for pos in middle_first:
            if p <= pos and stream[pos - p:pos] == stream[pos:pos + p] \
                    == stream[pos + p:pos + 2 * p]:
                yield pos, p


@functools.lru_cache
def _lzma_unit(prefix: bytes, zeros: int) -> tuple[int, int, int]:
    """(period p, periods per unit k, zeros per unit): inserting k periods of the steady
    state into the LZMA stream of ``prefix`` + ``zeros`` zero bytes adds that many zeros."""
    data = prefix + bytes(zeros)
    stream = _lzma(data)
    for pos, p in _periodic(stream, range(1, 512)):
        for k in range(1, 9):  # the coder's state may cycle over several output periods
            out, eof = _unlzma(stream[:pos] + stream[pos:pos + p] * k + stream[pos:])
            extra = len(out) - len(data)
            if eof and extra > 0 and out[:len(prefix)] == prefix and \
                    not any(out[len(prefix):]):
                return p, k, extra
    raise RuntimeError("no repeatable piece of LZMA output found")


def lzma_zeros(header_of: Callable[[int], bytes], at_least: int,
               probe: int = 4 << 20) -> Entry:
    """Member ``x.npy`` (zip LZMA) of ``header_of(n)`` then n >= ``at_least`` zero bytes, n a
    multiple of 4096; ``header_of`` must give one header length for every n."""
    h0 = header_of(at_least)
    p, k, unit_zeros = _lzma_unit(h0, probe)
    units = max(0, -(-(at_least - probe) // unit_zeros))
    base = probe + (-(probe + units * unit_zeros) % 4096)
    nzeros = base + units * unit_zeros
    header = header_of(nzeros)
    assert len(header) == len(h0)
    stream = _lzma(header + bytes(base))
    pos = next(_periodic(stream, range(p, p + 1)), (None,))[0]
    if pos is None:
        raise RuntimeError("no periodic LZMA output found")
    data = stream[:pos] + stream[pos:pos + p] * (k * units) + stream[pos:]
    props = struct.pack("<BI", (_LZMA["pb"] * 5 + _LZMA["lp"]) * 9 + _LZMA["lc"],
                        _LZMA["dict_size"])
    zip_head = struct.pack("<BBH", 9, 4, len(props)) + props
    return Entry("x.npy", zip_head + data, len(header) + nzeros,
                 crc32_zeros(zlib.crc32(header), nzeros), zipfile.ZIP_LZMA, flags=0x02)


# payloads: bombs ---------------------------------------------------------------------------

def npz_deflate_bomb() -> bytes:
    """Valid .npz, ~2 MB: deflate member x.npy inflating to 2 GiB (float32 (1024, 524288)
    zeros; every other limit holds): refused from the directory, ratio ~1030:1 > 100."""
    nbytes = 2 * GIB
    return write_zip([deflate_zeros(bomb_header(nbytes), nbytes)])


def npz_bzip2_bomb() -> bytes:
    """Valid .npz, ~9 KB: bzip2 member x.npy inflating to 2 GiB of float32 zeros (the
    measured attack: 1.7 KB that took 65 s and 2 GiB of disk): refused from the directory."""
    nbytes = 2 * GIB
    header = bomb_header(nbytes)
    data = bzip2_zeros(header, nbytes)
    return write_zip([Entry("x.npy", data, len(header) + nbytes,
                            crc32_zeros(zlib.crc32(header), nbytes), zipfile.ZIP_BZIP2)])


def npz_lzma_bomb() -> bytes:
    """Valid .npz, ~150 KB: LZMA member x.npy inflating to >= 1 GiB of float32 zeros (ratio
    ~7000:1): refused from the directory."""
    return write_zip([lzma_zeros(bomb_header, GIB)])


def npz_lying_size() -> bytes:
    """.npz whose directory (and .npy header) declare x (4, 3) float64 - 224 bytes, so no
    ratio check applies - while the bzip2 stream inflates to 1 GiB: refused at byte 225."""
    honest = npy_header((4, 3), "<f8") + bytes(96)
    data = bzip2_zeros(honest, GIB)
    return write_zip([Entry("x.npy", data, len(honest), zlib.crc32(honest),
                            zipfile.ZIP_BZIP2)])


# payloads: zip structure -------------------------------------------------------------------

def _x_npy() -> bytes:
    return npy(np.ones((4, 3)))


def npz_three_members() -> bytes:
    """.npz with x.npy, y.npy and z.npy: 3 entries in the end record, more than 2."""
    return write_zip([stored(n, _x_npy()) for n in ("x.npy", "y.npy", "z.npy")])


def npz_many_entries() -> bytes:
    """.npz with 3000 entries (~250 KB, a 190 KB directory): refused from the end record."""
    return write_zip([stored(f"a{i}.npy", b"") for i in range(3000)])


def npz_zip64_million_entries() -> bytes:
    """.npz whose zip64 end record claims 10**6 entries (the 32-bit one holds placeholders):
    refused from the zip64 record, before any directory parsing."""
    return write_zip([stored("x.npy", _x_npy())], zip64_entries=10**6)


def npz_big_directory() -> bytes:
    """.npz of x.npy and y.npy whose directory entries carry 60000-byte extra fields: a
    central directory of more than 64 KiB."""
    extra = struct.pack("<HH", 0xCAFE, 59996) + bytes(59996)
    entries = [stored("x.npy", _x_npy()), stored("y.npy", npy(np.ones(4)))]
    for e in entries:
        e.cd_extra = extra
    return write_zip(entries)


def npz_duplicate_x() -> bytes:
    """.npz with two members named x.npy (np.load would silently take one of them)."""
    return write_zip([stored("x.npy", _x_npy()), stored("x.npy", npy(np.zeros((4, 3))))])


def npz_duplicate_x_alias() -> bytes:
    """.npz with members x and x.npy: the same array after removing '.npy'."""
    return write_zip([stored("x", _x_npy()), stored("x.npy", _x_npy())])


def npz_bad_name() -> bytes:
    """.npz with a member named ../x.npy."""
    return write_zip([stored("../x.npy", _x_npy())])


def npz_no_x() -> bytes:
    """.npz holding only y.npy."""
    return write_zip([stored("y.npy", npy(np.ones(4)))])


def npz_encrypted() -> bytes:
    """.npz whose x.npy has the encryption flag (zipfile would ask for a password)."""
    e = stored("x.npy", _x_npy())
    e.flags = 0x01
    return write_zip([e])


def npz_unknown_method() -> bytes:
    """.npz whose x.npy claims compression method 99 (AES, unsupported)."""
    e = stored("x.npy", _x_npy())
    e.method = 99
    return write_zip([e])


def npz_overlapping_members() -> bytes:
    """.npz whose directory gives x.npy a compressed size reaching into y.npy's bytes."""
    x, y = stored("x.npy", _x_npy()), stored("y.npy", npy(np.ones(4)))
    x.cd_compress_size = x.cd_file_size = len(x.data) + 40
    return write_zip([x, y])


def npz_bad_crc() -> bytes:
    """.npz whose deflated x.npy inflates to its declared size but not to its CRC-32."""
    e = deflated("x.npy", _x_npy())
    e.crc ^= 1
    return write_zip([e])


def npz_truncated_member() -> bytes:
    """.npz whose deflate stream of x.npy ends (at its compressed size) before the data."""
    data = npy(np.random.default_rng(0).standard_normal((40, 30)))
    e = deflated("x.npy", data)
    e.data = e.data[:len(e.data) // 2]
    return write_zip([e])


def npz_junk_after_directory() -> bytes:
    """A valid .npz with 100 bytes after its end record (no archive comment declares them)."""
    return write_zip([stored("x.npy", _x_npy())], trailer=bytes(100))


def npz_header_size_mismatch() -> bytes:
    """.npz whose x.npy header implies 96 data bytes (4, 3) float64 but whose member holds
    104 (the directory is honest about the member)."""
    return write_zip([deflated("x.npy", npy_header((4, 3), "<f8") + bytes(104))])


def npz_member_too_many_rows() -> bytes:
    """.npz whose x.npy header declares 10**6 rows (> max_n), member size consistent with it:
    refused from the header, the data never inflated."""
    header = npy_header((10**6, 1), "|u1")
    return write_zip([deflate_zeros(header, 10**6, unit=1000)])


def npz_member_object_dtype() -> bytes:
    """.npz whose x.npy is a pickled object array."""
    return write_zip([stored("x.npy", npy(np.array([[{"a": 1}, 2]], dtype=object)))])


# payloads: .npy headers --------------------------------------------------------------------

_PARTIAL = "{'descr': '<f8', 'fortran_order': False, 'shape': (10, 3), "


def npy_unterminated_header() -> bytes:
    """.npy whose header length says 65535 bytes and whose body ends 60 bytes into it, the
    dict never closed (numpy's loader answered 500)."""
    return raw_header(_PARTIAL, length=65535)


def npy_header_without_newline() -> bytes:
    """.npy whose header length is consistent but whose dict is not closed nor
    newline-terminated; 240 data bytes follow."""
    return raw_header(_PARTIAL.ljust(118)) + bytes(240)


def npy_header_len_4gib() -> bytes:
    """Version 2.0 .npy whose header length field is 2**32 - 1 (a reader that trusts it reads
    4 GiB): refused from the first 12 bytes."""
    return raw_header(_PARTIAL, version=(2, 0), length=2**32 - 1)


def npy_bad_version() -> bytes:
    """.npy of format version 7.0."""
    return raw_header("{'descr': '<f8', 'fortran_order': False, 'shape': (4, 3), }",
                      version=(7, 0), pad=True) + bytes(96)


def npy_negative_shape() -> bytes:
    """.npy whose header shape is (-1, 3) (numpy's loader answered 500)."""
    return npy_header((-1, 3), "<f8") + bytes(24)


def npy_huge_axis() -> bytes:
    """.npy whose shape holds a 4000-bit integer (a hex literal: no digit limit applies)."""
    return raw_header("{'descr': '<f8', 'fortran_order': False, 'shape': (0x"
                      + "f" * 1000 + ", 3), }", pad=True) + bytes(24)


def npy_code_in_header() -> bytes:
    """.npy whose header dict is Python code, not a literal (must never be evaluated)."""
    return raw_header("{'descr': __import__('os').getcwd(), 'fortran_order': False, "
                      "'shape': (4, 3), }", pad=True) + bytes(96)


def npy_object_dtype() -> bytes:
    """.npy of an object array: pickled data (never loaded: no allow_pickle)."""
    return npy(np.array([[{"a": 1}, 2], [3, 4]], dtype=object))


def npy_structured_dtype() -> bytes:
    """.npy of a structured dtype (a list descr)."""
    return npy(np.zeros((4, 3), dtype=[("a", "<f8"), ("b", "<i4")]))


def npy_float128() -> bytes:
    """.npy declaring 16-byte floats ('<f16')."""
    return npy_header((4, 3), "<f16") + bytes(192)


def npy_too_many_rows() -> bytes:
    """.npy whose header says (10**6, 3) float64 (> max_n rows), followed by 24 bytes only:
    refused from the header, while the body streams."""
    return npy_header((10**6, 3), "<f8") + bytes(24)


def npy_too_many_features() -> bytes:
    """.npy whose header says (10, 2**21) float32: more values per row than max_features."""
    return npy_header((10, 2**21)) + bytes(24)


def npy_too_many_bytes() -> bytes:
    """.npy whose header says (2000, 10**6) float64: rows and features within the limits,
    16 GB > max_dataset_bytes."""
    return npy_header((MAX_N, 10**6), "<f8") + bytes(24)


def npy_truncated() -> bytes:
    """.npy whose header says (1000, 3) float64 (24000 bytes) followed by 100 bytes."""
    return npy_header((1000, 3), "<f8") + bytes(100)


def npy_trailing_bytes() -> bytes:
    """A valid (4, 3) float64 .npy with 10 bytes after its data."""
    return _x_npy() + bytes(10)


ALL: dict[str, Callable[[], bytes]] = {f.__name__: f for f in [
    npz_deflate_bomb, npz_bzip2_bomb, npz_lzma_bomb, npz_lying_size,
    npz_three_members, npz_many_entries, npz_zip64_million_entries, npz_big_directory,
    npz_duplicate_x, npz_duplicate_x_alias, npz_bad_name, npz_no_x, npz_encrypted,
    npz_unknown_method, npz_overlapping_members, npz_bad_crc, npz_truncated_member,
    npz_junk_after_directory, npz_header_size_mismatch, npz_member_too_many_rows,
    npz_member_object_dtype,
    npy_unterminated_header, npy_header_without_newline, npy_header_len_4gib,
    npy_bad_version, npy_negative_shape, npy_huge_axis, npy_code_in_header,
    npy_object_dtype, npy_structured_dtype, npy_float128, npy_too_many_rows,
    npy_too_many_features, npy_too_many_bytes, npy_truncated, npy_trailing_bytes,
]}

#: (status, field) when POSTed as the raw body
EXPECTED: dict[str, tuple[int, str]] = {
    name: (422, "x" if name.startswith("npy_") or name in (
        "npz_header_size_mismatch", "npz_member_too_many_rows", "npz_member_object_dtype")
        else "body")
    for name in ALL}
