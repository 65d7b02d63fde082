"""Page codecs: round trips, bounded output, and a clear MissingCodec when a library is absent."""

from __future__ import annotations

import os
import zlib

import pytest

from vmcrash.errors import DumpFormatError, MissingCodec, UsageError
from vmcrash.vmcore import _codecs
from vmcrash.vmcore._codecs import available_codecs, codec_for_flags, get_codec, resolve_codec

PAGE = 4096


@pytest.mark.parametrize("name", ["zlib", "zstd", "lzo", "snappy"])
def test_round_trip(name: str) -> None:
    """Every codec round-trips. `make test` installs all of them (the codecs extra), so a missing
    one is a failure here, not a pass; what a missing library looks like is tested below."""
    page = os.urandom(1000) + bytes(PAGE - 1000)
    assert name in available_codecs(), f"{name} codec library not installed (pip install -e '.[codecs]')"
    codec = get_codec(name)
    packed = codec.compress(page)
    assert len(packed) < PAGE
    assert codec.decompress(packed, PAGE) == page
    assert codec.decompress_head(packed, 10, PAGE)[:10] == page[:10]
    with pytest.raises(DumpFormatError):
        codec.decompress(packed[: len(packed) // 2], PAGE)
    with pytest.raises(DumpFormatError):
        codec.decompress(codec.compress(page + page), PAGE)  # two pages' worth


def test_missing_library_names_the_codec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_codecs, "_import", lambda name: None)
    monkeypatch.setattr(_codecs, "_cache", {})
    for name, hint in (("zstd", "zstandard"), ("lzo", "python-lzo"), ("snappy", "python-snappy")):
        with pytest.raises(MissingCodec, match=hint) as err:
            codec_for_flags(_codecs.CODEC_FLAGS[name])
        assert err.value.codec == name
    assert available_codecs() == ["zlib"]


def test_auto_is_one_order_smallest_fast_codec_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """``auto`` (convert_to_kdump and compaction alike) picks zstd when installed, as the README says;
    without zstd the next of lzo, snappy; zlib when nothing else is installed."""
    assert resolve_codec("auto") == "zstd"
    assert resolve_codec("lzo") == "lzo"
    with pytest.raises(UsageError, match="unknown codec 'brotli'"):
        resolve_codec("brotli")
    monkeypatch.setattr(_codecs, "_cache", {})
    monkeypatch.setattr(_codecs, "_FACTORIES", {**_codecs._FACTORIES, "zstd": lambda: None})
    assert resolve_codec("auto") == "lzo"
    monkeypatch.setattr(_codecs, "_cache", {})
    monkeypatch.setattr(_codecs, "_import", lambda name: None)
    assert resolve_codec("auto") == "zlib"


def test_flags() -> None:
    assert codec_for_flags(0) is None
    assert codec_for_flags(0x1).name == "zlib"
    with pytest.raises(DumpFormatError, match="conflicting"):
        codec_for_flags(0x3)
    assert zlib.decompress(get_codec("zlib").compress(b"x" * PAGE)) == b"x" * PAGE
