"""Additive attention's token mixing, fused and unfused, beside softmax attention's, in one run.

For the heads of one attention (its qkv projection's output ``[B, T, 3, H, D]`` in, the heads' ``[B, T, H·D]`` out,
the projections left out), timed round-robin:

- **fused**: the ``additive`` kernel (``kernels/additive.py``, untuned: its hand schedule), what ``to_kernels`` runs;
- **unfused**: what it ran before: the mixing in torch around the two ``matadd binary_real`` products on the kernels
  (``KernelBinaryProduct``), all (image, head) pairs in one call each;
- **torch**: the same mixing in torch alone (its products as float matmuls of the codes);
- **sdpa**: softmax attention's mixing, torch's ``scaled_dot_product_attention`` with the transposes around it that
  timm's ``Attention`` does (what ``msa`` costs between its projections).

At DeiT-Tiny's 197 tokens × 64 dims × 3 heads, PVTv2-b0's first stage without spatial reduction (3,136 × 32 × 1) and
the quick-start's 65 × 32 × 2, batch 1 and 8. The fused output is checked against the torch mixing first.

    python bench/additive_kernel.py [--rounds 9]

Writes ``bench/results/additive-kernel.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write  # noqa: E402

from kernels.runtime import KernelBinaryProduct, KernelSet  # noqa: E402
from search_spaces.ops.attention import TOKEN_CONV_TAPS, angular_codes, angular_mix  # noqa: E402

# (name, tokens, head dim, heads)
CASES = [("DeiT-Tiny", 197, 64, 3), ("PVTv2-b0 stage 1", 3136, 32, 1), ("quick-start", 65, 32, 2)]
BATCHES = (1, 8)


def median_ms(fn, seconds: float) -> float:
    """Median time of one call over about ``seconds`` of calls, after a warm-up."""
    for _ in range(3):
        fn()
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9, help="round-robin rounds (the median is recorded)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    kernels = KernelSet("cpu", trials=0, root=Path(tempfile.mkdtemp(prefix="additive-kernel-")))
    product = KernelBinaryProduct(kernels)
    rows = []
    for name, tokens, dim, heads in CASES:
        for images in BATCHES:
            torch.manual_seed(0)
            qkv = torch.randn(images, tokens, 3, heads, dim)
            taps = 0.1 * torch.randn(heads, 1, TOKEN_CONV_TAPS, 1)
            flat_taps, kind = taps[:, 0, :, 0].contiguous(), torch.tensor([0], dtype=torch.int32)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)

            def fused():
                return kernels.additive_attention(qkv, flat_taps, kind).reshape(images, tokens, heads * dim)

            def mixing(binary_product):
                def run():
                    out = angular_mix(*angular_codes(q, k), v, taps, binary_product)
                    return out.transpose(1, 2).reshape(images, tokens, heads * dim)
                return run

            def sdpa():
                return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(images, tokens, heads * dim)

            ways = {"fused": fused, "unfused": mixing(product), "torch": mixing(torch.matmul), "sdpa": sdpa}
            error = float((ways["fused"]() - ways["torch"]()).abs().max())
            assert error < 1e-4, (name, images, error)
            timings = {way: [] for way in ways}
            for _ in range(args.rounds):  # round-robin: the machine's drift spreads over all four alike
                for way, fn in ways.items():
                    timings[way].append(median_ms(fn, 0.05 if images == 1 else 0.2))
            ms = {way: statistics.median(values) for way, values in timings.items()}
            rows.append({"case": name, "images": images, "tokens": tokens, "head_dim": dim, "heads": heads,
                         **{f"{way}_ms": round(value, 4) for way, value in ms.items()},
                         "fused_over_unfused": round(ms["fused"] / ms["unfused"], 3),
                         "fused_over_sdpa": round(ms["fused"] / ms["sdpa"], 3),
                         "max_error_vs_torch": float(f"{error:.2g}")})
            print(rows[-1], flush=True)
    write("additive-kernel", rows,
          notes="Additive attention's token mixing (qkv projection output in, heads out; projections not included), "
                "eager, 2 threads, untuned kernels, random inputs, tensor binarization, the token conv's taps random. "
                "fused: the additive kernel; unfused: torch around two matadd binary_real kernels (the runtime "
                "before); torch: torch alone; sdpa: softmax attention's mixing with timm's transposes. Median over "
                f"{args.rounds} round-robin rounds of each way's median call time.")


if __name__ == "__main__":
    main()
