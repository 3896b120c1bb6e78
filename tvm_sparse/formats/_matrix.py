"""What every 2-D sparse format derives the same way from its arrays, shape and non-zero count."""

from __future__ import annotations


class SparseMatrix:
    """Mixin for the frozen format dataclasses: ``density`` and ``nbytes`` from their fields.

    A subclass names the arrays a kernel streams in ``STREAMED`` and defines ``shape`` and
    ``nnz``; the report and the cost model read these two numbers from every format alike.
    """

    STREAMED: tuple[str, ...] = ()

    @property
    def density(self) -> float:
        size = self.shape[0] * self.shape[1]
        return self.nnz / size if size else 0.0

    @property
    def nbytes(self) -> int:
        """Bytes of values and indices (what a kernel streams)."""
        return int(sum(getattr(self, name).nbytes for name in self.STREAMED))
