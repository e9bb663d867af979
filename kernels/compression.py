"""Compressed sizes of a serialized model: what zeros and shared values save on disk and on the wire."""

from __future__ import annotations

import zlib


def compressed_sizes(data: bytes) -> dict[str, int]:
    """Bytes after DEFLATE (zip, level 9) and zstd (level 19, when the zstandard package is present)."""
    sizes = {"raw": len(data), "zip": len(zlib.compress(data, 9))}
    try:
        import zstandard
    except ImportError:  # pragma: no cover - zstandard is a dependency
        return sizes
    sizes["zstd"] = len(zstandard.ZstdCompressor(level=19).compress(data))
    return sizes
