"""Builds adaeagle_ext._C: the C++ CPU kernels always, the CUDA kernels when possible.

ADAEAGLE_CUDA=auto (default) builds the CUDA kernels when nvcc and a CUDA build of torch are
present; 1 requires them and fails with the reason; 0 builds the CPU kernels only.
TORCH_CUDA_ARCH_LIST overrides the default targets (sm_80 and sm_90 code plus compute_90 PTX).
MAX_JOBS bounds parallel compilation (ninja).
ADAEAGLE_SANITIZE=1 (`make sanitize`) compiles the CPU kernels with AddressSanitizer and
UndefinedBehaviorSanitizer (-O1 -g, CUDA off); build it into its own folders
(--build-lib/--build-temp) so the normal build is untouched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from setuptools import setup
from torch.utils import cpp_extension

ROOT = Path(__file__).parent.resolve()
CSRC = ROOT / "csrc"
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def _cuda_home() -> str | None:
    """The CUDA toolkit root: CUDA_HOME/CUDA_PATH, else where nvcc itself says it lives (nvcc on
    PATH may be a wrapper script, so its own folder proves nothing)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var) and Path(os.environ[var], "bin", "nvcc").exists():
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        dry = subprocess.run(
            [nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
            capture_output=True, text=True, timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (dry.stdout + dry.stderr).splitlines():
        if line.startswith("#$ TOP="):
            return str(Path(line.split("=", 1)[1].strip()).resolve())
    return str(Path(nvcc).resolve().parent.parent)


def _wheel_cuda_includes() -> list[str]:
    """Header folders of the nvidia-* wheels (cusparse.h, cublas_v2.h) that torch's CUDA
    headers need but a bare toolkit may lack."""
    found = []
    for site in map(Path, sys.path):
        for inc in sorted(site.glob("nvidia/*/include")):
            if (inc / "cusparse.h").exists() or (inc / "cublas_v2.h").exists():
                found.append(str(inc))
    return list(dict.fromkeys(found))


def _want_cuda() -> tuple[bool, str]:
    mode = os.environ.get("ADAEAGLE_CUDA", "auto").lower()
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"ADAEAGLE_CUDA must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        return False, "disabled by ADAEAGLE_CUDA=0"
    reason = None
    home = _cuda_home()
    if torch.version.cuda is None:
        reason = f"torch {torch.__version__} is not a CUDA build"
    elif home is None:
        reason = "nvcc not found (set CUDA_HOME or put nvcc on PATH)"
    if reason and mode == "1":
        raise SystemExit(f"ADAEAGLE_CUDA=1 but the CUDA kernels cannot be built: {reason}")
    if reason:
        print(f"adaeagle_ext: building CPU kernels only ({reason})", file=sys.stderr)
        return False, reason
    os.environ.setdefault("CUDA_HOME", home)
    cpp_extension.CUDA_HOME = home
    return True, home


def _sanitize() -> bool:
    mode = os.environ.get("ADAEAGLE_SANITIZE", "0")
    if mode not in ("0", "1"):
        raise SystemExit(f"ADAEAGLE_SANITIZE must be 0 or 1, got {mode!r}")
    return mode == "1"


def _write_build_config(with_cuda: bool) -> str:
    """Writes build/generated/adaeagle_build_config.h (read by build_info()); returns its dir."""
    out = ROOT / "build" / ("sanitize/generated" if _sanitize() else "generated")
    out.mkdir(parents=True, exist_ok=True)
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "") if with_cuda else ""
    text = (
        "#pragma once\n"
        f'#define ADAEAGLE_TORCH_VERSION "{torch.__version__}"\n'
        f'#define ADAEAGLE_CUDA_ARCHS "{archs}"\n'
        f'#define ADAEAGLE_CUDA_VERSION "{torch.version.cuda if with_cuda else ""}"\n'
    )
    path = out / "adaeagle_build_config.h"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return str(out)


def _extension():
    if _sanitize():
        os.environ["ADAEAGLE_CUDA"] = "0"
    with_cuda, _ = _want_cuda()
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    cpp_sources = sorted(
        str(p.relative_to(ROOT)) for p in [*CSRC.glob("*.cpp"), *CSRC.glob("cpu/*.cpp")]
    )
    include_dirs = [str(CSRC), str(CSRC / "include"), _write_build_config(with_cuda)]
    # at::parallel_for is header code: without OpenMP it silently runs on one thread.
    cxx_flags = ["-O3", "-fopenmp"]
    link_flags = ["-fopenmp"]
    if _sanitize():
        # Any report aborts the process (a failing test run), not just a printed warning.
        san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
        cxx_flags = ["-O1", "-g", "-fno-omit-frame-pointer", "-fopenmp", *san]
        link_flags = ["-fopenmp", *san]
    nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    if not with_cuda:
        return cpp_extension.CppExtension(
            "adaeagle_ext._C",
            cpp_sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    defines = ["-DADAEAGLE_WITH_CUDA"]
    # Searched after the toolkit's own headers, so the wheels only fill in what it lacks.
    wheel_includes = [flag for inc in _wheel_cuda_includes() for flag in ("-idirafter", inc)]
    cu_sources = sorted(str(p.relative_to(ROOT)) for p in CSRC.glob("cuda/*.cu"))
    return cpp_extension.CUDAExtension(
        "adaeagle_ext._C",
        cpp_sources + cu_sources,
        include_dirs=include_dirs,
        extra_compile_args={
            "cxx": cxx_flags + defines + wheel_includes,
            "nvcc": nvcc_flags + defines,
        },
        extra_link_args=link_flags,
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
