"""What stands between the w=1 attention at 2,645 residues and its exponential-throughput bound.

What it measures
----------------
The limits table (``bench_limits.py``) finds the VAMPNet step at 2,645
residues and ``window=1`` bound by the attention's exponentials, and short
of that bound. This script takes the attention of that step apart, at one
thread, on tensors of the step's shape (``2B = 6`` frames, 8 heads of 8
channels, 2,646 tokens with the class token; float32, standard normal
queries, keys and values scaled as the network's are):

* ``exp``: ``torch.exp`` over as many values as the attention has scores
  (the bound: one exponential a score);
* ``softmax``: ``torch.softmax`` over the scores of one frame's heads,
  materialised (max, subtract, exp, sum, divide: the same exponentials plus
  four passes over memory);
* ``scores QK^T`` and ``P V``: the two batched products with 8-wide heads,
  which the fused kernel does block by block;
* ``fused forward``: torch's ``scaled_dot_product_attention`` (the flash
  kernel for CPU that the step uses), and ``fused forward + backward``
  (the backward recomputes the probabilities: a second exponential a
  score).

Every row is given as scores per second and as a fraction of the ``exp``
row, so the table says how much of the fused kernel's time the
exponentials themselves can explain and how much goes to the products and
the passes around them. The step's own time (``bench_limits.py``) is not
repeated here.

Usage::

    python benchmarks/bench_attention.py [--tokens 2646] [--frames 6] [--repeats 5]

Writes benchmarks/results/attention.json. Run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from _common import cpu_model, timings

HERE = Path(__file__).resolve().parent




def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2646)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "attention.json")
    args = parser.parse_args(argv)

    import torch
    from torch.nn import functional as F

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    b, h, n, d = args.frames, args.heads, args.tokens, args.head_dim
    q, k, v = (torch.randn(b, h, n, d, generator=gen) for _ in range(3))
    scores_total = b * h * n * n
    one_frame = torch.randn(h, n, n, generator=gen) * d ** -0.5
    frame_scores = h * n * n
    values = torch.rand(scores_total // b, generator=gen) * -20.0  # one frame's worth, max-subtracted
    out = torch.empty_like(values)

    rows = {}

    def row(name, fn, n_scores):
        seconds = timings(fn, args.repeats)
        best, median = min(seconds), statistics.median(seconds)
        rows[name] = {"seconds_best": best, "seconds_median": median, "scores": n_scores,
                      "scores_per_s": n_scores / best}

    row("exp", lambda: torch.exp(values, out=out), values.numel())
    row("softmax (materialised)", lambda: torch.softmax(one_frame, dim=-1), frame_scores)
    row("scores QK^T (8-wide heads)", lambda: q[:1] @ k[:1].transpose(-1, -2), frame_scores)
    probs = torch.softmax(q[:1] @ k[:1].transpose(-1, -2) * d ** -0.5, dim=-1)
    row("P V (8-wide heads)", lambda: probs @ v[:1], frame_scores)
    del probs
    row("fused forward", lambda: F.scaled_dot_product_attention(q, k, v), scores_total)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    grad = torch.randn(b, h, n, d, generator=gen)

    def forward_backward():
        F.scaled_dot_product_attention(qg, kg, vg).backward(grad)

    row("fused forward + backward", forward_backward, 2 * scores_total)  # two exponentials a score

    exp_rate = rows["exp"]["scores_per_s"]
    print(f"{cpu_model()}, 1 thread, torch {torch.__version__}; {b} frames x {h} heads x {n:,}^2 = "
          f"{scores_total / 1e6:,.0f} M scores a forward pass")
    print("| operation | scores/s (G) | fraction of the exp rate |")
    print("|---|---|---|")
    for name, r in rows.items():
        r["fraction_of_exp"] = r["scores_per_s"] / exp_rate
        print(f"| {name} | {r['scores_per_s'] / 1e9:.3f} | {r['fraction_of_exp']:.1%} |")
    parts = [rows[name]["scores_per_s"] for name in ("softmax (materialised)", "scores QK^T (8-wide heads)",
                                                      "P V (8-wide heads)")]
    unfused = 1 / sum(1 / p for p in parts)
    print(f"softmax + both products, unfused: {unfused / 1e9:.3f} G scores/s ({unfused / exp_rate:.1%} of the exp rate)")
    report = {"shape": {"frames": b, "heads": h, "tokens": n, "head_dim": d}, "rows": rows,
              "unfused_scores_per_s": unfused,
              "machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch": torch.__version__,
                          "threads": 1, "load_average": os.getloadavg()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
