"""The quantized kernel's per-call cost at one activation row (single-stream decode), per weight
shape, with the weights coming from DRAM as in the model: SmolLM2-135M's four Q4_1 linears in
30 distinct copies each (66 MB, twice the Zen 3's 32 MB L3), called in the model's order (qkv, o,
gate_up, down per layer) and then its Q8_0 LM head (30 MB), one sweep per repetition.

Each source tree's quant_linear.cpp is compiled alone with the kernels' AVX2 flags into a small
extension whose `sweep` times every call in C++ (no Python between calls: as the fused decoder
layer calls the kernel), into preallocated output rows (quant_linear_into, as the step buffers).
The variants (--variants TREE or TREE::CFLAGS, each a build loaded side by side in one process;
--pages 4k 2m: the weights where torch allocated them and/or moved onto transparent huge pages
as the engine does, utils/huge_pages.py) take turns sweep by sweep, so a shared machine's load
falls on all alike; --rounds fresh processes. Per shape the report gives the median and best
per-call time of each variant over all its sweeps (--clock cpu: the calling thread's CPU time,
for 1 thread on a busy machine; at 2 threads wall, as the calling thread's CPU time misses the
other's work) and the GB/s of the weight bytes read, and a digest of the outputs' bits at 1, 3,
17 and 64 rows (two builds with the same arithmetic give the same digest).

    python benchmarks/small_linear_sweep.py --variants /tmp/base . --pages 4k 2m \
        --threads 1 --clock cpu --output-json benchmarks/results/small_linear_sweep_session11.json
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import subprocess
import sys

# (name, out_features, in_features, u4): SmolLM2-135M's linears and its LM head
SHAPES = [
    ("qkv", 960, 576, True),
    ("o", 576, 576, True),
    ("gate_up", 3072, 576, True),
    ("down", 576, 1536, True),
    ("lm_head", 49152, 576, False),
]
GROUP = 32

_SWEEP_CPP = r"""
#include <torch/extension.h>
#include <time.h>
// Each tree's build beside the others in one process: the op registrations dropped (the sweep
// calls the kernel directly), and every symbol but the module's hidden (-fvisibility=hidden).
#undef TORCH_LIBRARY_FRAGMENT
#undef TORCH_LIBRARY_IMPL
#define TORCH_LIBRARY_FRAGMENT(ns, m) [[maybe_unused]] static void unused_def(torch::Library& m)
#define TORCH_LIBRARY_IMPL(ns, k, m) [[maybe_unused]] static void unused_impl(torch::Library& m)
#include "quant_linear.cpp"

static clockid_t clock_id = CLOCK_MONOTONIC;

static int64_t now_ns() {
  timespec t;
  clock_gettime(clock_id, &t);
  return t.tv_sec * 1000000000LL + t.tv_nsec;
}

// ns of each call [reps, calls]: call i is x[i] W_i^T into out[i]
at::Tensor sweep(std::vector<at::Tensor> x, std::vector<at::Tensor> codes,
                 std::vector<at::Tensor> scales, std::vector<at::Tensor> mins,
                 std::vector<bool> u4, std::vector<at::Tensor> out, int64_t reps,
                 bool cpu_clock) {
  clock_id = cpu_clock ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC;
  const int64_t n = static_cast<int64_t>(x.size());
  at::Tensor ns = at::empty({reps, n}, at::kLong);
  int64_t* t = ns.data_ptr<int64_t>();
  for (int64_t r = 0; r < reps; ++r) {
    for (int64_t i = 0; i < n; ++i) {
      const int64_t start = now_ns();
      pagedllm::quant_linear_into(x[i], codes[i], scales[i], mins[i], 32, u4[i], 16, out[i]);
      t[r * n + i] = now_ns() - start;
    }
  }
  return ns;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("sweep", &sweep); }
"""


def _variant(spec: str) -> tuple[str, list[str]]:
    """"TREE" or "TREE::CFLAGS" (extra compile flags: a knob under test)."""
    tree, _, flags = spec.partition("::")
    return os.path.abspath(tree), flags.split()


def _load(spec: str):
    from torch.utils.cpp_extension import load_inline

    tree, extra = _variant(spec)
    csrc = os.path.join(tree, "pagedllm", "kernels", "csrc")
    files = sorted(glob.glob(os.path.join(csrc, "**", "*.h"), recursive=True))
    files.append(os.path.join(csrc, "quant_linear.cpp"))
    digest = hashlib.sha256((_SWEEP_CPP + " ".join(extra)).encode())
    for f in files:
        with open(f, "rb") as fh:
            digest.update(os.path.relpath(f, csrc).encode() + fh.read())
    h = digest.hexdigest()[:12]
    build = os.path.join("/tmp", "pagedllm_small_linear_sweep", h)
    os.makedirs(build, exist_ok=True)
    return load_inline(
        name=f"small_linear_sweep_{h}", cpp_sources=[_SWEEP_CPP], extra_include_paths=[csrc],
        extra_cflags=["-O3", "-DNDEBUG", "-fopenmp", "-mavx2", "-mfma", "-mf16c",
                      "-fvisibility=hidden", *extra],
        extra_ldflags=["-fopenmp"], build_directory=build, verbose=False,
    )  # fmt: skip


def _weight(n: int, k: int, u4: bool, gen):
    """Random codes with float16 scales and mins (GGUF Q4_1 / Q8_0's) in the row-interleaved
    layout (the one every SmolLM2 matrix takes)."""
    import torch

    from pagedllm.model_executor.quantization.kernels import interleave_rows

    if u4:
        codes = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=gen)
        mins = -torch.rand(n, k // GROUP, generator=gen) * 0.08
    else:
        codes = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen).view(torch.uint8)
        mins = torch.zeros(n, k // GROUP)
    scales = torch.rand(n, k // GROUP, generator=gen) * 0.02 + 0.001
    c, s, z = interleave_rows(codes, scales.half(), mins.half(), GROUP, u4)
    return c, s, z, n * k // (2 if u4 else 1) + 2 * s.numel() * s.element_size()


def _weights(layers: int, gen):
    """The sweep's calls in the model's order, then one copy of each shape for the bits."""
    import torch

    calls, copies, nbytes = [], {}, {}
    for layer in range(layers):
        for name, n, k, u4 in SHAPES:
            if name == "lm_head" and layer != layers - 1:
                continue
            c, s, z, nbytes[name] = _weight(n, k, u4, gen)
            copies.setdefault(name, (c, s, z, u4, k))
            calls.append((name, torch.randn(1, k, generator=gen), c, s, z, u4, torch.empty(1, n)))
    return calls, copies, nbytes


def _on_huge_pages(calls: list) -> list:
    """The calls with their weights copied into a huge-page arena (utils/huge_pages.py, as the
    engine places a model's weights)."""
    import torch
    from torch import nn

    from pagedllm.utils.huge_pages import move_weights_to_huge_pages

    holder = nn.Module()
    for i, (_, _, c, s, z, _, _) in enumerate(calls):
        for part, t in zip("csz", (c, s, z)):
            holder.register_buffer(f"{part}{i}", t.clone())
    if not move_weights_to_huge_pages(holder):
        raise SystemExit("no transparent huge pages here")
    b = dict(holder.named_buffers())
    return [(nm, x, b[f"c{i}"], b[f"s{i}"], b[f"z{i}"], u4, torch.empty_like(o))
            for i, (nm, x, _, _, _, u4, o) in enumerate(calls)]  # fmt: skip


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    calls, copies, nbytes = _weights(args.layers, gen)
    names = [c[0] for c in calls]
    placed = {"4k": calls, "2m": _on_huge_pages(calls) if "2m" in args.pages else None}
    # (variant, pages) pairs, each a build and the sweep's columns (its weights' placement)
    built = {v: _load(v) for v in args.variants}
    exts, sweeps = [], []
    for v in args.variants:
        for pages in args.pages:
            exts.append(built[v])
            sweeps.append([list(c) for c in zip(*placed[pages])][1:])
    bits = []
    for ext in exts:  # the outputs' bits at several row counts
        digest = hashlib.sha256()
        xgen = torch.Generator().manual_seed(1)
        for c, s, z, u4, k in copies.values():
            for m in (1, 3, 17, 64):
                x = torch.randn(m, k, generator=xgen)
                out = torch.empty(m, c.shape[0] * 16)
                ext.sweep([x], [c], [s], [z], [u4], [out], 1, False)
                digest.update(out.numpy().tobytes())
        bits.append(digest.hexdigest()[:16])
    for ext, columns in zip(exts, sweeps):
        ext.sweep(*columns, 3, False)  # warm up
    # one sweep of each variant in turn (the machine's load falls on all alike)
    samples = [{name: [] for name in nbytes} for _ in exts]
    for rep in range(args.reps):
        for i in range(len(exts)) if rep % 2 == 0 else reversed(range(len(exts))):
            ns = exts[i].sweep(*sweeps[i], 1, args.clock == "cpu")[0].tolist()
            for name, t in zip(names, ns):
                samples[i][name].append(t)
    json.dump({"bits": bits, "ns": samples, "bytes": nbytes}, sys.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["."],
                        help="source trees, each optionally TREE::CFLAGS")  # fmt: skip
    parser.add_argument("--pages", nargs="+", choices=["4k", "2m"], default=["4k"],
                        help="the weights where torch allocates them (4k) and/or on huge pages")
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--reps", type=int, default=40, help="sweeps per variant and process")
    parser.add_argument("--rounds", type=int, default=3, help="processes per thread count")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: the calling thread's CPU time (1 thread on a busy machine)")
    parser.add_argument("--output-json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.threads = args.threads[0]
        return child(args)

    def load() -> str:
        with open("/proc/loadavg") as f:
            return f.read().strip()

    record = {"clock": args.clock, "pages": args.pages, "layers": args.layers, "reps": args.reps,
              "rounds": args.rounds, "variants": args.variants, "loadavg_before": load(),
              "results": {}}  # fmt: skip
    for threads in args.threads:
        labels = [f"{v} [{p}]" for v in args.variants for p in args.pages]
        samples = [{} for _ in labels]
        for _ in range(args.rounds):
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--threads",
                   str(threads), "--layers", str(args.layers), "--reps", str(args.reps),
                   "--clock", args.clock, "--pages", *args.pages,
                   "--variants", *args.variants]  # fmt: skip
            # (this script's tree lays out the weights; the variants give only their kernels)
            env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(
                os.path.abspath(__file__))))  # fmt: skip
            out = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True,
                                            text=True).stdout)  # fmt: skip
            for i, per_name in enumerate(out["ns"]):
                for name, ns in per_name.items():
                    samples[i].setdefault(name, []).extend(ns)
        res = {}
        for i, variant in enumerate(labels):
            row = {"bits": out["bits"][i]}
            for name, ns in samples[i].items():
                ns = sorted(ns)
                med = ns[len(ns) // 2]
                row[name] = {"median_us": round(med / 1e3, 2), "best_us": round(ns[0] / 1e3, 2),
                             "median_GBps": round(out["bytes"][name] / med, 1)}  # fmt: skip
            row["layer_median_us"] = round(
                sum(row[n]["median_us"] for n, *_ in SHAPES if n != "lm_head"), 1)
            res[variant] = row
            print(threads, "threads", variant, json.dumps(row), flush=True)
        record["results"][f"{threads}_threads"] = res
    record["loadavg_after"] = load()
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
