"""PackedEmbedding: lookups of a few ids come from a row cache with the bits of dequantising
them, and the cache follows the weight, its data and the dtype."""

import pytest
import torch

from adaeagle_ext import ops
from adaeagle_ext.models.packed_layers import PackedEmbedding, packing_epoch
from adaeagle_ext.packed import PackedWeight

VOCAB, HIDDEN = 40, 64


def table(seed: int = 0) -> torch.Tensor:
    return torch.randn(VOCAB, HIDDEN, generator=torch.Generator().manual_seed(seed))


def direct(emb: PackedEmbedding, ids: torch.Tensor) -> torch.Tensor:
    return emb.weight_packed.rows(ids).to(emb.dtype)


@pytest.mark.parametrize("ggml_type", [ops.GGML_Q8_0, ops.GGML_Q4_1, ops.GGML_BF16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lookups_have_the_bits_of_dequantising(ggml_type, dtype):
    emb = PackedEmbedding(PackedWeight.from_float(table(), ggml_type), dtype)
    gen = torch.Generator().manual_seed(1)
    cases = [torch.tensor([3]), torch.tensor([3, 3, 7]), torch.tensor([[1, 2], [2, 39]]),
             torch.randint(0, VOCAB, (64,), generator=gen),
             torch.randint(0, VOCAB, (65,), generator=gen),  # above CACHED_LOOKUP: no cache
             torch.tensor([3], dtype=torch.int32), torch.zeros(0, dtype=torch.int64)]
    for _ in range(2):  # the second round reads the cached rows
        for ids in cases:
            got = emb(ids)
            assert got.dtype == dtype and got.shape == (*ids.shape, HIDDEN)
            assert torch.equal(got, direct(emb, ids)), ids
    # golden: a Q8_0 block of 32 equal values v holds d = v / 127 and q = 127
    if ggml_type == ops.GGML_Q8_0 and dtype == torch.float32:
        flat = PackedEmbedding(PackedWeight.from_float(torch.full((2, 32), 1.27), ggml_type),
                               dtype)
        d = torch.tensor(1.27 / 127, dtype=torch.float16).float()
        assert torch.equal(flat(torch.tensor([1])), (127 * d).expand(1, 32))


def test_outputs_do_not_alias_the_cache():
    emb = PackedEmbedding(PackedWeight.from_float(table(), ops.GGML_Q8_0), torch.float32)
    ids = torch.tensor([5])
    want = direct(emb, ids)
    out = emb(ids)
    out.fill_(123.0)  # the model adds to its embeddings in place
    emb(torch.tensor([5, 6]))[0].zero_()
    assert torch.equal(emb(ids), want)


def test_the_cache_follows_the_weight_and_the_dtype():
    emb = PackedEmbedding(PackedWeight.from_float(table(0), ops.GGML_Q8_0), torch.float32)
    ids = torch.tensor([2, 9])
    emb(ids)
    emb.weight_packed = PackedWeight.from_float(table(1), ops.GGML_Q8_0)  # replaced
    assert torch.equal(emb(ids), direct(emb, ids))
    fresh = PackedWeight.from_float(table(2), ops.GGML_Q8_0)
    emb.weight_packed.data.copy_(fresh.data)  # changed in place
    assert torch.equal(emb(ids), fresh.rows(ids))
    emb.dtype = torch.bfloat16
    assert emb(ids).dtype == torch.bfloat16 and torch.equal(emb(ids), direct(emb, ids))
    with_q8 = emb.weight_packed.with_act_quant(8)  # same data, a new PackedWeight
    emb.weight_packed = with_q8
    assert torch.equal(emb(ids), direct(emb, ids))


def test_filling_the_cache_keeps_the_packing_epoch():
    emb = PackedEmbedding(PackedWeight.from_float(table(), ops.GGML_Q8_0), torch.float32)
    emb(torch.tensor([1]))
    epoch = packing_epoch()
    for i in range(VOCAB):
        emb(torch.tensor([i]))
    assert packing_epoch() == epoch


def test_a_full_cache_still_looks_up_every_row(monkeypatch):
    emb = PackedEmbedding(PackedWeight.from_float(table(), ops.GGML_Q4_1), torch.float32)
    monkeypatch.setattr(PackedEmbedding, "CACHE_BYTES", 3 * HIDDEN * 4)  # 3 rows
    ids = torch.arange(VOCAB).flip(0)
    for _ in range(2):
        assert torch.equal(emb(ids[:20]), direct(emb, ids[:20]))
        assert torch.equal(emb(ids[20:]), direct(emb, ids[20:]))
    assert len(emb.__dict__["_rows"][2]) == 3


@pytest.mark.parametrize("bad", [VOCAB, -1, 10**6])
def test_bad_ids_raise(bad):
    emb = PackedEmbedding(PackedWeight.from_float(table(), ops.GGML_Q8_0), torch.float32)
    emb(torch.tensor([0]))
    with pytest.raises((IndexError, RuntimeError)):
        emb(torch.tensor([1, bad]))
    assert torch.equal(emb(torch.tensor([1])), direct(emb, torch.tensor([1])))
