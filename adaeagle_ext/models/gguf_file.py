"""The header of a GGUF file (metadata and tensor descriptions), read straight from its bytes.

gguf-py's ``GGUFReader`` builds a numpy view for every element of every metadata array, which
for the default model's tokenizer (about 100k strings) takes seconds. This walks the same
header in milliseconds, decodes only the metadata the caller wants, and leaves the tensor
data in the file's memory map. Little-endian GGUF v2 and v3 (the layout of
``ggml/docs/gguf.md``); a byte-swapped (big-endian) file is refused by name.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS

# GGUF metadata value types (gguf.GGUFValueType) -> struct format of one scalar.
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                   10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFFormatError(ValueError):
    """Bytes that are not a well-formed GGUF header; ``truncated`` when they end too early."""

    def __init__(self, message: str, truncated: bool = False):
        super().__init__(message)
        self.truncated = truncated


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's description. dims: ggml order (dims[0] is the row length); ggml_type: the
    type number; offset: where its data starts, in bytes from the start of the file."""

    name: str
    dims: tuple[int, ...]
    ggml_type: int
    offset: int


@dataclass
class GGUFHeader:
    """version; metadata: the decoded values (arrays as lists) of the keys that were not
    skipped; keys: every key in the file; tensors: in file order; data_start: byte offset of
    the (aligned) data section."""

    version: int
    metadata: dict[str, object]
    keys: list[str]
    tensors: list[TensorInfo]
    data_start: int


class _Cursor:
    def __init__(self, buf):
        self.buf = buf
        self.size = len(buf)
        self.pos = 0

    def take(self, n: int, what: str) -> int:
        """Advances past n bytes; returns where they start."""
        start = self.pos
        if n < 0 or start + n > self.size:
            raise GGUFFormatError(f"the file ends inside {what} (at byte {start}, needs {n} "
                                  f"more, has {self.size - start})", truncated=True)
        self.pos = start + n
        return start

    def scalar(self, fmt: str, what: str):
        return struct.unpack_from(fmt, self.buf, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.scalar("<Q", what)
        start = self.take(n, what)
        try:
            return bytes(self.buf[start:start + n]).decode("utf-8")
        except UnicodeDecodeError as e:
            raise GGUFFormatError(f"{what} is not UTF-8: {e}") from e

    def skip_string(self, what: str) -> None:
        self.take(self.scalar("<Q", what), what)

    def value(self, vtype: int, what: str, decode: bool):
        """One metadata value of type ``vtype`` (None when not decoded)."""
        if vtype in _SCALAR_FORMATS:
            v = self.scalar(_SCALAR_FORMATS[vtype], what)
            return v if decode else None
        if vtype == _STRING:
            if decode:
                return self.string(what)
            self.skip_string(what)
            return None
        if vtype != _ARRAY:
            raise GGUFFormatError(f"{what} has an unknown value type {vtype}")
        etype = self.scalar("<I", what)
        count = self.scalar("<Q", what)
        if etype in _SCALAR_FORMATS:
            size = struct.calcsize(_SCALAR_FORMATS[etype])
            if count > (self.size - self.pos) // size:
                self.take(count * size, what)  # raises: the array runs past the end
            start = self.take(count * size, what)
            if not decode:
                return None
            dtype = np.dtype(_SCALAR_FORMATS[etype].replace("?", "b1"))
            return np.frombuffer(self.buf, dtype, count, start).tolist()
        if count > self.size - self.pos:  # every element takes at least one byte
            self.take(count, what)
        if decode:
            return [self.value(etype, what, True) for _ in range(count)]
        for _ in range(count):
            self.value(etype, what, False)
        return None


def read_header(buf, skip: Callable[[str], bool] = lambda key: False) -> GGUFHeader:
    """Parses the header of a GGUF file held in ``buf`` (bytes, or a uint8 memory map).

    skip: keys whose values are walked over, not decoded (still listed in ``keys``);
        ``general.alignment`` is always decoded.

    Raises GGUFFormatError (``truncated`` set when the bytes end too early).
    """
    cur = _Cursor(buf)
    magic = bytes(buf[cur.take(4, "the magic number"):4])
    if magic != MAGIC:
        raise GGUFFormatError(f"no GGUF magic number (starts with {magic!r}), corrupt or "
                              "not a GGUF file")
    version = cur.scalar("<I", "the version")
    if version not in (2, 3):
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        if swapped in (2, 3):
            raise GGUFFormatError("a big-endian GGUF file, which is not supported")
        raise GGUFFormatError(f"GGUF version {version} is not supported (2 or 3), corrupt?")
    n_tensors = cur.scalar("<Q", "the tensor count")
    n_keys = cur.scalar("<Q", "the metadata count")
    metadata: dict[str, object] = {}
    keys: list[str] = []
    for i in range(n_keys):
        key = cur.string(f"metadata key {i}")
        vtype = cur.scalar("<I", f"the type of {key}")
        decode = key == "general.alignment" or not skip(key)
        value = cur.value(vtype, f"metadata {key}", decode)
        keys.append(key)
        if decode:
            metadata[key] = value
    described = []  # (name, dims, type, offset from the data section)
    for i in range(n_tensors):
        name = cur.string(f"the name of tensor {i}")
        n_dims = cur.scalar("<I", f"tensor {name}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise GGUFFormatError(f"tensor {name} has {n_dims} dimensions (1 to {MAX_DIMS}), "
                                  "corrupt?")
        dims = tuple(cur.scalar("<Q", f"tensor {name}") for _ in range(n_dims))
        ggml_type = cur.scalar("<I", f"tensor {name}")
        offset = cur.scalar("<Q", f"tensor {name}")
        described.append((name, dims, ggml_type, offset))
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment < 1 or alignment & (alignment - 1):
        raise GGUFFormatError(f"general.alignment must be a power of two, got {alignment!r}")
    data_start = -(-cur.pos // alignment) * alignment
    tensors = [TensorInfo(name, dims, ggml_type, data_start + offset)
               for name, dims, ggml_type, offset in described]
    return GGUFHeader(version, metadata, keys, tensors, data_start)
