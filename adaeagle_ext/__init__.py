"""adaeagle_ext: lossless speculative decoding with adaptive draft structures.

Import never fails when the compiled extension is missing: the ops raise a clear error on use.
"""

from adaeagle_ext import ops, ref
from adaeagle_ext._build import build_info, extension_available
from adaeagle_ext.api import GenerationResult, Pipeline, load, set_threads
from adaeagle_ext.spec.strategy import available_methods

__all__ = [
    "GenerationResult",
    "Pipeline",
    "available_methods",
    "build_info",
    "extension_available",
    "load",
    "ops",
    "ref",
    "set_threads",
]
__version__ = "0.1.0"
