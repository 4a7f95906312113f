"""The GGUF header reader (models/gguf_file.py) against gguf-py's GGUFReader."""

import struct

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from adaeagle_ext.models.gguf_file import GGUFFormatError, read_header


def write_assorted(path, alignment=None):
    """A GGUF file with metadata of every value type and three tensors."""
    w = GGUFWriter(str(path), "llama")
    if alignment is not None:
        w.add_uint32("general.alignment", alignment)
    w.add_uint8("t.u8", 250)
    w.add_int8("t.i8", -7)
    w.add_uint16("t.u16", 65000)
    w.add_int16("t.i16", -300)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -2_000_000_000)
    w.add_float32("t.f32", 0.1)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo, wörld")
    w.add_string("t.empty", "")
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -(2**62))
    w.add_float64("t.f64", -1.25e-300)
    w.add_array("t.ints", [1, -2, 3])
    w.add_array("t.floats", [0.5, -1.5])
    w.add_array("t.strs", ["a", "", "ç" * 5])
    w.add_array("t.bools", [True, False, True])
    w.add_array("t.nested", [[1, 2], [3]])
    w.add_token_list([f"tok{i}" for i in range(50)])
    w.add_token_scores([float(i) for i in range(50)])
    w.add_eos_token_id(7)
    gen = np.random.default_rng(0)
    w.add_tensor("a", gen.standard_normal((3, 8)).astype(np.float32))
    w.add_tensor("b", gen.standard_normal(5).astype(np.float32))
    w.add_tensor("c", np.arange(4 * 68, dtype=np.uint8).reshape(4, 68), raw_dtype=T.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def reference(path):
    r = GGUFReader(str(path), "r")
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tensors = [(t.name, tuple(int(d) for d in t.shape), int(t.tensor_type), int(t.data_offset))
               for t in r.tensors]
    return meta, tensors


@pytest.mark.parametrize("alignment", [None, 64])
def test_matches_gguf_py(tmp_path, alignment):
    path = tmp_path / "a.gguf"
    write_assorted(path, alignment)
    meta, tensors = reference(path)
    header = read_header(np.memmap(path, dtype=np.uint8, mode="r"))
    assert header.version == 3
    assert header.keys == list(meta)
    ours = dict(header.metadata)
    ours["t.nested"] = [x for inner in ours["t.nested"] for x in inner]  # gguf-py flattens
    for key, value in meta.items():
        assert ours[key] == value, key
        assert type(ours[key]) is type(value), key
    assert [(t.name, t.dims, t.ggml_type, t.offset) for t in header.tensors] == tensors
    assert header.data_start % (alignment or 32) == 0
    assert header.data_start <= min(t.offset for t in header.tensors)


def test_golden_values(tmp_path):
    path = tmp_path / "a.gguf"
    write_assorted(path)
    m = read_header(path.read_bytes()).metadata
    assert m["t.u64"] == 2**63 + 5 and m["t.i8"] == -7 and m["t.bool"] is True
    assert m["t.str"] == "héllo, wörld" and m["t.strs"] == ["a", "", "ççççç"]
    assert m["t.nested"] == [[1, 2], [3]] and m["t.bools"] == [True, False, True]
    assert m["tokenizer.ggml.tokens"][:2] == ["tok0", "tok1"]


def test_skipped_keys_are_listed_not_decoded(tmp_path):
    path = tmp_path / "a.gguf"
    write_assorted(path, alignment=64)
    full = read_header(path.read_bytes())
    skip = read_header(path.read_bytes(), skip=lambda k: k.startswith(("t.", "tokenizer.",
                                                                       "general.")))
    assert skip.keys == full.keys
    assert set(skip.metadata) == {"general.alignment"}  # always decoded: it places the data
    assert skip.tensors == full.tensors and skip.data_start == full.data_start


def test_every_cut_is_truncated(tmp_path):
    path = tmp_path / "a.gguf"
    write_assorted(path)
    data = path.read_bytes()
    end = read_header(data).data_start
    for cut in range(0, end - 16, 7):  # the header ends at most 31 padding bytes before
        with pytest.raises(GGUFFormatError) as info:
            read_header(data[:cut])
        assert info.value.truncated, cut


def header_bytes(version=3, n_tensors=0, kv=b"", n_kv=1):
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + kv


def kv_string(key):
    return struct.pack("<Q", len(key)) + key.encode()


def test_corrupt_headers_are_named():
    with pytest.raises(GGUFFormatError, match="magic"):
        read_header(b"GGML" + bytes(40))
    with pytest.raises(GGUFFormatError, match="big-endian"):
        read_header(b"GGUF" + struct.pack(">I", 3) + bytes(16))
    with pytest.raises(GGUFFormatError, match="version 7"):
        read_header(header_bytes(version=7, n_kv=0))
    with pytest.raises(GGUFFormatError, match="unknown value type 13"):
        read_header(header_bytes(kv=kv_string("k") + struct.pack("<I", 13)))
    with pytest.raises(GGUFFormatError, match="not UTF-8"):
        read_header(header_bytes(kv=struct.pack("<Q", 2) + b"\xff\xfe" + struct.pack("<IB", 0, 1)))
    bad_align = kv_string("general.alignment") + struct.pack("<II", GGUFValueType.UINT32, 24)
    with pytest.raises(GGUFFormatError, match="power of two"):
        read_header(header_bytes(kv=bad_align))
    tensor = kv_string("w") + struct.pack("<I", 5)
    with pytest.raises(GGUFFormatError, match="5 dimensions"):
        read_header(header_bytes(n_tensors=1, n_kv=0, kv=tensor))


def test_huge_array_count_is_truncated_not_allocated():
    kv = kv_string("k") + struct.pack("<IIQ", GGUFValueType.ARRAY, GGUFValueType.STRING, 2**60)
    with pytest.raises(GGUFFormatError) as info:
        read_header(header_bytes(kv=kv))
    assert info.value.truncated
    kv = kv_string("k") + struct.pack("<IIQ", GGUFValueType.ARRAY, GGUFValueType.UINT64, 2**61)
    with pytest.raises(GGUFFormatError) as info:
        read_header(header_bytes(kv=kv))
    assert info.value.truncated
