"""A stand-in "Triton" implementation for the dispatcher tests (no Triton needed)."""


def toy_triton(x: int, *, k: int = 1) -> str:
    return f"triton {x} {k}"
