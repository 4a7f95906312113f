"""GGUF loading on small files written here with ``gguf`` (and hand-packed K-quant blocks)."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter, quants
from model_fixtures import hf_model, random_weights, tiny_config

from adaeagle_ext.models.gguf_loader import GGUFError, read_gguf
from adaeagle_ext.models.llama import LlamaForCausalLM, build_model
from adaeagle_ext.models.tree_inputs import chain_inputs

HF_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight", "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
WRITABLE = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1]


def gguf_name(hf):
    if hf in HF_TO_GGUF:
        return HF_TO_GGUF[hf]
    _, _, layer, rest = hf.split(".", 3)
    return f"blk.{layer}.{HF_TO_GGUF[rest]}"


def llama_cpp_permute(w, heads):
    """How llama.cpp's converter stores q/k rows (interleaved RoPE pairs)."""
    rows = w.shape[0]
    return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, config, weights, types, raw=None):
    """Write a llama GGUF; ``types(hf_name) -> GGMLQuantizationType``; ``raw`` maps a HF name
    to (uint8 bytes [rows, row_bytes], type) stored as given."""
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(config.num_layers)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_heads)
    w.add_head_count_kv(config.num_kv_heads)
    w.add_rope_freq_base(config.rope_theta)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    expected = {}
    for name, t in weights.items():
        if config.tie_word_embeddings and name == "lm_head.weight":
            continue
        arr = t.numpy().astype(np.float32)
        qtype = types(name) if arr.ndim == 2 else T.F32
        if raw and name in raw:
            packed, qtype = raw[name]
            expected[name] = torch.from_numpy(quants.dequantize(packed, qtype).copy())
        else:
            packed = quants.quantize(arr, qtype)
            expected[name] = torch.from_numpy(quants.dequantize(packed, qtype).copy())
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config.num_heads if "q_proj" in name else config.num_kv_heads
            packed = llama_cpp_permute(packed, heads)
        if qtype in (T.F32, T.F16):
            w.add_tensor(gguf_name(name), packed)
        else:
            w.add_tensor(gguf_name(name), packed, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


CONFIG = tiny_config(hidden_size=64, intermediate_size=96, num_heads=4, num_kv_heads=2,
                     vocab_size=80)


@pytest.mark.parametrize("qtype", WRITABLE, ids=lambda t: t.name)
def test_each_writable_type_loads_exactly(tmp_path, qtype):
    weights = random_weights(CONFIG, seed=int(qtype))
    path = tmp_path / "m.gguf"
    expected = write_gguf(path, CONFIG, weights, lambda name: qtype)
    ck = read_gguf(path)
    assert ck.config.num_heads == 4 and ck.config.num_kv_heads == 2
    assert ck.config.vocab_size == 80 and not ck.config.tie_word_embeddings
    sd = ck.state_dict()
    assert sd.keys() == expected.keys()
    for name, want in expected.items():
        assert torch.equal(sd[name], want.reshape(sd[name].shape)), name
    q = ck.packed["model.layers.0.self_attn.q_proj.weight"]
    assert q.ggml_type == qtype and q.shape == (64, 64) and q.data.dtype == np.uint8
    if qtype != T.F32:  # quantisation changed the weights, loading did not
        assert not torch.equal(sd["model.layers.1.mlp.up_proj.weight"],
                               weights["model.layers.1.mlp.up_proj.weight"])


def test_gguf_model_matches_transformers(tmp_path):
    config = CONFIG.replace(tie_word_embeddings=True)
    weights = random_weights(config, seed=4)
    path = tmp_path / "m.gguf"
    types = {0: T.Q4_1, 1: T.Q8_0}
    expected = write_gguf(path, config, weights,
                          lambda n: types.get(len(n) % 2, T.F16))
    ck = read_gguf(path)
    assert ck.config.tie_word_embeddings
    model = build_model(ck.config, ck.state_dict())
    hf = hf_model(config, {k: v.reshape(weights[k].shape) for k, v in expected.items()})
    tokens = torch.arange(30) % 80
    with torch.no_grad():
        want = hf(tokens[None]).logits[0]
    cache = model.new_cache(1, 32)
    pos, ind, mask = chain_inputs(torch.tensor([30]), cache.lens)
    got, _ = model(tokens, pos, ind, mask, cache.lens, cache)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)


# --- K-quants: gguf cannot quantize them, so blocks are packed here by hand -----------------

def pack_q4_k(d, dmin, sc, mn, q):
    """One Q4_K block (256 values): f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 nibbles.
    Value i = d * sc[i // 32] * q[i] - dmin * mn[i // 32]."""
    scales = np.zeros(12, np.uint8)
    for j in range(4):
        scales[j] = sc[j] | ((sc[j + 4] >> 4) << 6)
        scales[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6)
    for j in range(4, 8):
        scales[j + 4] = (sc[j] & 0xF) | ((mn[j] & 0xF) << 4)
    qs = np.zeros(128, np.uint8)
    for i in range(256):
        chunk, within = divmod(i, 64)
        if within < 32:
            qs[32 * chunk + within] |= q[i]
        else:
            qs[32 * chunk + within - 32] |= q[i] << 4
    head = np.array([d, dmin], np.float16).view(np.uint8)
    return np.concatenate([head, scales, qs])


def pack_q6_k(d, scales, q):
    """One Q6_K block (256 values): 128 low-nibble bytes, 64 high-bit bytes, 16 int8 scales,
    f16 d. Value i = d * scales[8h + 2k + l // 16] * (q[i] - 32) with i = 128h + 32k + l."""
    ql = np.zeros(128, np.uint8)
    qh = np.zeros(64, np.uint8)
    for h in range(2):
        for j in range(32):
            a, b, c, e = (q[128 * h + 32 * k + j] for k in range(4))
            ql[64 * h + j] = (a & 0xF) | ((c & 0xF) << 4)
            ql[64 * h + j + 32] = (b & 0xF) | ((e & 0xF) << 4)
            qh[32 * h + j] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6)
    tail = np.array([d], np.float16).view(np.uint8)
    return np.concatenate([ql, qh, scales.astype(np.int8).view(np.uint8), tail])


def random_q4_k_rows(rows, rng):
    packed, values = [], []
    for _ in range(rows):
        d, dmin = np.float16(rng.uniform(0.01, 0.1)), np.float16(rng.uniform(0.0, 0.05))
        sc, mn = rng.integers(0, 64, 8), rng.integers(0, 64, 8)
        q = rng.integers(0, 16, 256)
        packed.append(pack_q4_k(d, dmin, sc, mn, q))
        j = np.arange(256) // 32
        values.append(np.float32(d) * sc[j] * q - np.float32(dmin) * mn[j])
    return np.stack(packed), np.stack(values).astype(np.float32)


def random_q6_k_rows(rows, rng):
    packed, values = [], []
    for _ in range(rows):
        d = np.float16(rng.uniform(0.001, 0.02))
        scales = rng.integers(-128, 128, 16)
        q = rng.integers(0, 64, 256)
        packed.append(pack_q6_k(d, scales, q))
        i = np.arange(256)
        idx = 8 * (i // 128) + 2 * ((i % 128) // 32) + (i % 32) // 16
        values.append(np.float32(d) * scales[idx] * (q - 32))
    return np.stack(packed), np.stack(values).astype(np.float32)


@pytest.mark.parametrize("qtype,maker", [(T.Q4_K, random_q4_k_rows), (T.Q6_K, random_q6_k_rows)],
                         ids=["Q4_K", "Q6_K"])
def test_k_quants_hand_packed(tmp_path, qtype, maker):
    config = CONFIG.replace(intermediate_size=256)
    rng = np.random.default_rng(int(qtype))
    packed, values = maker(config.hidden_size, rng)
    # The hand-packed blocks mean what the packer says, per gguf's own dequantiser.
    np.testing.assert_allclose(quants.dequantize(packed, qtype), values, rtol=1e-6, atol=1e-6)
    weights = random_weights(config, seed=1)
    name = "model.layers.1.mlp.down_proj.weight"
    path = tmp_path / "k.gguf"
    write_gguf(path, config, weights, lambda n: T.F32, raw={name: (packed, qtype)})
    ck = read_gguf(path)
    assert ck.packed[name].ggml_type == qtype
    got = ck.state_dict()[name]
    assert got.shape == (64, 256)
    np.testing.assert_allclose(got.numpy(), values, rtol=1e-6, atol=1e-6)


def test_unsupported_type_is_named(tmp_path):
    path = tmp_path / "q5.gguf"
    write_gguf(path, CONFIG, random_weights(CONFIG),
               lambda n: T.Q5_0 if "gate" in n else T.F32)
    with pytest.raises(GGUFError, match="Q5_0"):
        read_gguf(path)


def test_truncated_and_corrupt_files(tmp_path):
    path = tmp_path / "ok.gguf"
    write_gguf(path, CONFIG, random_weights(CONFIG), lambda n: T.Q8_0)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 20):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(GGUFError, match="truncated"):
            read_gguf(bad)
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"XXXX" + data[4:])
    with pytest.raises(GGUFError, match="corrupt"):
        read_gguf(corrupt)
    with pytest.raises(GGUFError, match="no such"):
        read_gguf(tmp_path / "missing.gguf")


def test_loading_stays_off_torch_dynamo(tmp_path):
    """A fresh process loads a GGUF model without importing torch._dynamo (about 2 s here):
    meta-device random init (normal_, arange) used to pull it in."""
    path = tmp_path / "m.gguf"
    write_gguf(path, CONFIG, random_weights(CONFIG), lambda n: T.Q4_1)
    code = ("import sys, adaeagle_ext\n"
            f"pipe = adaeagle_ext.load({str(path)!r}, progress=False)\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_embedding_init_unchanged_off_meta():
    """Built off the meta device, the embedding is drawn as nn.Embedding draws it."""
    torch.manual_seed(3)
    model = LlamaForCausalLM(CONFIG)
    torch.manual_seed(3)
    expected = torch.nn.Embedding(CONFIG.vocab_size, CONFIG.hidden_size).weight
    assert torch.equal(model.model.embed_tokens.weight, expected)
