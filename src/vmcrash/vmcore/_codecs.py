"""Page codecs of the kdump-compressed format: zlib always; lzo, snappy, zstd when a library is present.

Decompression is bounded: the output of one page may not exceed the page size, whatever the
input claims (a hostile dump cannot make us allocate more). A codec whose library is missing
raises :class:`~vmcrash.errors.MissingCodec` naming it and the package that provides it.
``"auto"`` means the first installed codec of :data:`AUTO_CODEC_ORDER` (:func:`resolve_codec`).
"""

from __future__ import annotations

import importlib
import io
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from vmcrash.errors import DumpFormatError, MissingCodec, UsageError

__all__ = [
    "AUTO_CODEC_ORDER",
    "CODEC_FLAGS",
    "FLAG_LZO",
    "FLAG_SNAPPY",
    "FLAG_ZLIB",
    "FLAG_ZSTD",
    "Codec",
    "available_codecs",
    "codec_for_flags",
    "get_codec",
    "resolve_codec",
]

# page_desc.flags and disk_dump_header.status bits (makedumpfile's diskdump_mod.h).
FLAG_ZLIB = 0x01
FLAG_LZO = 0x02
FLAG_SNAPPY = 0x04
FLAG_ZSTD = 0x20
CODEC_FLAGS = {"zlib": FLAG_ZLIB, "lzo": FLAG_LZO, "snappy": FLAG_SNAPPY, "zstd": FLAG_ZSTD}
#: What ``"auto"`` means, the one order (the writer and the capture pipeline's compaction both use
#: it). A kdump file is written by compaction, in the background after the guest runs again, and
#: then kept: the smallest output among the fast codecs wins over the fastest. Measured on a 2 GiB
#: dump: lzo 3.2 s, zstd 8.4 s, zlib 26 s, and zstd's file the smallest of the fast ones; lzo and
#: snappy next (faster, larger); zlib last, but always there.
AUTO_CODEC_ORDER = ("zstd", "lzo", "snappy", "zlib")
_HINTS = {
    "lzo": "pip install python-lzo (needs liblzo2-dev to build)",
    "snappy": "pip install python-snappy (or cramjam)",
    "zstd": "pip install zstandard",
}


@dataclass(frozen=True)
class Codec:
    """One page codec. ``decompress(data, out_bytes)`` returns exactly ``out_bytes`` or raises."""

    name: str
    flag: int
    compress: Callable[[bytes], bytes]
    _decompress: Callable[[bytes, int], bytes]
    _head: Callable[[bytes, int], bytes] | None = None

    def decompress(self, data: bytes, out_bytes: int) -> bytes:
        """Decompress one page; :raises DumpFormatError: corrupt data or wrong output size."""
        try:
            page = self._decompress(data, out_bytes)
        except (MissingCodec, DumpFormatError):
            raise
        except Exception as exc:  # each library has its own error types; all mean "corrupt page"
            raise DumpFormatError(f"{self.name}: corrupt compressed page ({type(exc).__name__})") from exc
        if len(page) != out_bytes:
            raise DumpFormatError(f"{self.name}: page decompresses to {len(page)} bytes, not {out_bytes}")
        return page


    def decompress_head(self, data: bytes, want: int, out_bytes: int) -> bytes:
        """At least the first ``want`` bytes of a page (only those are decoded where the codec can).

        :raises DumpFormatError: corrupt data.
        """
        if self._head is None:
            return self.decompress(data, out_bytes)[:want]
        try:
            return self._head(data, want)
        except Exception as exc:
            raise DumpFormatError(f"{self.name}: corrupt compressed page ({type(exc).__name__})") from exc


def _import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _zlib_codec() -> Codec:
    def decompress(data: bytes, out_bytes: int) -> bytes:
        d = zlib.decompressobj()
        page = d.decompress(data, out_bytes)
        if d.unconsumed_tail:
            raise DumpFormatError("zlib: page data longer than a page")
        return page

    def head(data: bytes, want: int) -> bytes:
        return zlib.decompressobj().decompress(data, want)

    return Codec("zlib", FLAG_ZLIB, lambda b: zlib.compress(b, 1), decompress, head)


def _zstd_codec() -> Codec | None:
    zstd = _import("zstandard")
    if zstd is not None:
        cctx = zstd.ZstdCompressor(level=1, write_content_size=True)
        dctx = zstd.ZstdDecompressor()

        def decompress(data: bytes, out_bytes: int) -> bytes:
            # stream_reader never allocates more than asked, whatever the frame header claims.
            with dctx.stream_reader(io.BytesIO(data)) as reader:
                page = reader.read(out_bytes + 1)
            return bytes(page)

        return Codec("zstd", FLAG_ZSTD, cctx.compress, decompress, decompress)
    return None


def _lzo_codec() -> Codec | None:
    lzo = _import("lzo")
    if lzo is not None:
        # python-lzo: decompress(data, header=False, buflen) is LZO1X "safe" with a fixed output.
        return Codec("lzo", FLAG_LZO, lambda b: lzo.compress(b, 1, False),
                     lambda d, n: lzo.decompress(d, False, n))
    return None


def _snappy_codec() -> Codec | None:
    snappy = _import("snappy")
    if snappy is not None and hasattr(snappy, "uncompress"):
        def decompress(data: bytes, out_bytes: int) -> bytes:
            _check_snappy_length(data, out_bytes)
            return bytes(snappy.uncompress(data))

        return Codec("snappy", FLAG_SNAPPY, lambda b: bytes(snappy.compress(b)), decompress)
    cramjam = _import("cramjam")
    if cramjam is not None:
        def decompress_cj(data: bytes, out_bytes: int) -> bytes:
            _check_snappy_length(data, out_bytes)
            return bytes(cramjam.snappy.decompress_raw(data))

        return Codec("snappy", FLAG_SNAPPY, lambda b: bytes(cramjam.snappy.compress_raw(b)), decompress_cj)
    return None


def _check_snappy_length(data: bytes, out_bytes: int) -> None:
    """Raw snappy starts with the output length as a varint: refuse before allocating."""
    length = shift = 0
    for i, byte in enumerate(data[:5]):
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
        if i == 4:
            raise DumpFormatError("snappy: bad length header")
    if length != out_bytes:
        raise DumpFormatError(f"snappy: page claims {length} bytes, not {out_bytes}")


_FACTORIES: dict[str, Callable[[], Codec | None]] = {
    "zlib": _zlib_codec, "lzo": _lzo_codec, "snappy": _snappy_codec, "zstd": _zstd_codec,
}
_cache: dict[str, Codec | None] = {}


def get_codec(name: str) -> Codec:
    """The codec called ``name``. :raises MissingCodec: its library is not installed."""
    if name not in _FACTORIES:
        raise DumpFormatError(f"unknown codec {name!r}")
    if name not in _cache:
        _cache[name] = _FACTORIES[name]()
    codec = _cache[name]
    if codec is None:
        raise MissingCodec(name, hint=_HINTS.get(name, ""))
    return codec


def available_codecs() -> list[str]:
    """Names of the codecs usable on this host, in the order of :data:`AUTO_CODEC_ORDER`."""
    out = []
    for name in AUTO_CODEC_ORDER:
        try:
            get_codec(name)
        except MissingCodec:
            continue
        out.append(name)
    return out


def resolve_codec(codec: str) -> str:
    """The codec a writer uses for ``codec``: ``"auto"`` is the first installed of
    :data:`AUTO_CODEC_ORDER` (zlib is always installed); any other name is checked.

    :raises UsageError: an unknown name. :raises MissingCodec: its library is not installed.
    """
    if codec == "auto":
        return available_codecs()[0]
    if codec not in CODEC_FLAGS:
        raise UsageError(f"unknown codec {codec!r}; choose auto, {', '.join(CODEC_FLAGS)}")
    get_codec(codec)  # raises MissingCodec
    return codec


def codec_for_flags(flags: int) -> Codec | None:
    """The codec a page descriptor's flags name, ``None`` for a raw page.

    :raises DumpFormatError: unknown or several compression bits. :raises MissingCodec: no library.
    """
    comp = flags & (FLAG_ZLIB | FLAG_LZO | FLAG_SNAPPY | FLAG_ZSTD)
    if comp == 0:
        return None
    for name, flag in CODEC_FLAGS.items():
        if comp == flag:
            return get_codec(name)
    raise DumpFormatError(f"page descriptor has conflicting compression flags {flags:#x}")
