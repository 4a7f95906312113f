"""HF-format directories (config.json + safetensors) through ``api.load``."""

import json

import pytest
import torch
from model_fixtures import hf_model, random_weights, tiny_config

from adaeagle_ext.api import load
from adaeagle_ext.models.hf_loader import read_hf_dir


def save_hf_dir(path, config, weights):
    hf = hf_model(config, weights)
    hf.save_pretrained(str(path), safe_serialization=True)
    return hf


@pytest.mark.parametrize("tied", [False, True])
def test_hf_dir_loads_and_matches(tmp_path, tied):
    config = tiny_config(tie_word_embeddings=tied, eos_token_ids=[3])
    weights = random_weights(config, seed=9)
    hf = save_hf_dir(tmp_path, config, weights)
    cfg, sd = read_hf_dir(tmp_path)
    assert cfg == config
    pipe = load(tmp_path, dtype="float32")
    assert pipe.checkpoint is None
    prompt = [4, 8, 15, 16, 23, 42]
    res = pipe.generate(prompt, max_new_tokens=8, eos=False)
    want = hf.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                       eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    assert res.token_ids == want


def test_qwen2_config_means_qkv_biases(tmp_path):
    d = tiny_config().to_hf_dict() | {"model_type": "qwen2"}
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(FileNotFoundError, match="safetensors"):
        read_hf_dir(tmp_path)
    from adaeagle_ext.models.config import LlamaConfig

    cfg = LlamaConfig.from_hf_dict(d)
    assert cfg.attention_bias and not cfg.attention_out_bias


def test_bad_dirs_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        read_hf_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(tiny_config().to_hf_dict()))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80")
    with pytest.raises(ValueError, match="pickle"):
        read_hf_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such"):
        load(tmp_path / "nothing")
    with pytest.raises(ValueError, match="dtype"):
        load(tmp_path, dtype="float64")
