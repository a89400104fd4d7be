"""PNG plots of benchmark records: throughput and latency against batch size (latency),
concurrency (serve) or engine (throughput). matplotlib's object API on the Agg canvas, so no
global backend is switched; without matplotlib the plot is skipped with a message."""

from __future__ import annotations

from typing import Any

MISSING = "matplotlib not installed (pip install pagedllm[bench]): plot skipped"


def _figure(title: str) -> tuple[Any, Any, Any] | None:
    """(figure, left axes, right axes), or None when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print(MISSING, flush=True)
        return None
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    fig.suptitle(title)
    return fig, left, right


def _save(fig: Any, path: str) -> str:
    fig.savefig(path, dpi=100)
    print(f"wrote {path}", flush=True)
    return path


def _lines(ax: Any, xs: list, series: dict[str, list], xlabel: str, ylabel: str) -> None:
    for label, ys in series.items():
        points = [(x, y) for x, y in zip(xs, ys) if y is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    if len(xs) > 1 and min(xs) > 0 and max(xs) / min(xs) >= 8:
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend()


def plot_latency(record: dict, path: str) -> str | None:
    made = _figure(f"pagedllm bench latency: {record['model']}")
    if made is None:
        return None
    fig, left, right = made
    rows = record["results"]
    xs = [r["batch_size"] for r in rows]
    engines = list(dict.fromkeys(name for r in rows for name in r["engines"]))

    def series(get) -> dict[str, list]:
        return {
            e: [get(r["engines"][e]) if e in r["engines"] else None for r in rows] for e in engines
        }

    _lines(left, xs, series(lambda s: s["decode_tok_s"]), "batch size", "decode tok/s")
    _lines(
        right, xs, series(lambda s: s["latency_s"]["mean"]), "batch size", "batch latency, mean (s)"
    )
    return _save(fig, path)


def plot_serve(record: dict, path: str) -> str | None:
    made = _figure(f"pagedllm bench serve: {record['served_model_name']}")
    if made is None:
        return None
    fig, left, right = made
    rows = record["results"]
    xs = [r["max_concurrency"] or r["num_prompts"] for r in rows]
    _lines(
        left,
        xs,
        {
            "output tok/s": [r["output_tok_s"] for r in rows],
            "total tok/s": [r["total_tok_s"] for r in rows],
        },
        "concurrency",
        "tokens/s",
    )
    _lines(
        right,
        xs,
        {
            f"{m.upper()} median": [r[f"{m}_ms"]["median"] for r in rows]
            for m in ("ttft", "tpot", "itl", "e2e")
        },
        "concurrency",
        "ms",
    )
    right.set_yscale("log")
    return _save(fig, path)


def plot_throughput(record: dict, path: str) -> str | None:
    made = _figure(f"pagedllm bench throughput: {record['model']}")
    if made is None:
        return None
    fig, left, right = made
    names = [r["engine"] for r in record["results"]]
    for ax, key, label in (
        (left, "output_tok_s", "output tok/s"),
        (right, "requests_per_s", "requests/s"),
    ):
        ax.bar(names, [r[key] for r in record["results"]])
        ax.set_ylabel(label)
        ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)
