"""The neutral layer every other subpackage may import: layer specs and Relax helpers.

``ir`` imports nothing from ``passes``, ``schedules`` or ``codegen``, so those three can share
what they all need (what a layer is, how to read a Relax function) without importing each other.
"""

from .tvmscript_ast_cache import install as _install_tvmscript_ast_cache
from .tvmscript_stack import install as _install_fast_tvmscript_stack

# every kernel builder parses TVMScript: see tvmscript_stack and tvmscript_ast_cache
_install_fast_tvmscript_stack()
_install_tvmscript_ast_cache()
