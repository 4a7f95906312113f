"""adaeagle_ext: lossless speculative decoding with adaptive draft structures.

Import never fails when the compiled extension is missing: the ops raise a clear error on use.
"""

from adaeagle_ext import ops, ref
from adaeagle_ext._build import build_info, extension_available

__all__ = ["build_info", "extension_available", "ops", "ref"]
__version__ = "0.1.0"
