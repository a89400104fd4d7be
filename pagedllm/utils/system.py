import os


def physical_cores() -> int:
    """Physical cores (hyper-threads share execution units, so matmuls gain nothing from them)."""
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1
