"""TVMScript's parser reads each function's source into its AST once, not on every parse.

Why: every ``@T.prim_func`` decoration parses the function's source text to a Python AST and
converts it to TVMScript's ``doc`` tree (``Source.as_ast``), then does it again for its
well-formedness check, and again for every ``T.macro`` call. A kernel builder is one function
whose source never changes between calls (only the closure's shapes do), so the tree is the
same every time: about a third of a Winograd kernel's build. One tree per source text is
shared. The parser reads the tree; the one write (the expression evaluator gives a slice
without a step ``step=1``) is idempotent, so a tree parsed before reads the same.
"""

from __future__ import annotations

_MAX_ENTRIES = 512  # distinct kernel/macro sources; a few dozen in practice
_trees: dict[str, object] = {}


def install() -> None:
    """Cache ``Source.as_ast`` by source text (idempotent)."""
    from tvm.script.parser.core import diagnostics

    source = diagnostics.Source
    if getattr(source.as_ast, "_tvm_sparse_cached", False):
        return
    parse = source.as_ast

    def as_ast(self):
        tree = _trees.get(self.source)
        if tree is None:
            tree = parse(self)
            if len(_trees) >= _MAX_ENTRIES:
                _trees.pop(next(iter(_trees)))
            _trees[self.source] = tree
        return tree

    as_ast._tvm_sparse_cached = True
    source.as_ast = as_ast
