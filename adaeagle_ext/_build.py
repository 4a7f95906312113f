"""Loads the compiled extension; never raises at import, explains what is missing on use."""

from __future__ import annotations

_IMPORT_ERROR: Exception | None = None
try:
    from adaeagle_ext import _C  # noqa: F401  (registers torch.ops.adaeagle.*)
except ImportError as exc:  # built without the extension, or built against another torch
    _C = None
    _IMPORT_ERROR = exc


def extension_available() -> bool:
    """True when adaeagle_ext._C is importable (the ops are registered)."""
    return _C is not None


def require_extension() -> None:
    """Raises a RuntimeError that says how to build the extension when it is missing."""
    if _C is None:
        raise RuntimeError(
            "adaeagle_ext._C is not available, so the adaeagle ops cannot run: "
            f"{_IMPORT_ERROR}. Build it with `pip install --no-build-isolation -e .` "
            "(or `make test`) against the torch you import."
        )


def build_info() -> dict:
    """How the extension was built: {'cuda', 'cuda_archs', 'cuda_version', 'torch_version',
    'compiler'}; raises if the extension is missing."""
    require_extension()
    return dict(_C.build_info())
