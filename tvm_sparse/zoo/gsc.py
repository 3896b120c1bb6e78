"""Zoo members: placeholder until filled (see tvm_sparse/zoo/__init__.py)."""

MODELS: list = []
