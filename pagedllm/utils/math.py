def cdiv(a: int, b: int) -> int:
    """Ceiling division."""
    return -(a // -b)


def round_up(a: int, b: int) -> int:
    return cdiv(a, b) * b
