"""`./pm bench embed`: how fast the local model loads and embeds, on this machine.

Measures, with the numpy all-MiniLM-L6-v2 of this package: the model load (weights, tokenizer),
batch throughput over a corpus of incident-like texts of mixed lengths (what the embedder loop
does), and the latency of embedding one short text (what the hypothesis phase's recall does).
Run: `./pm bench embed [--texts N] [--rounds R]`, or directly
`python -m pm_embeddings.bench --model-dir DIR`.
"""

# ruff: noqa: T201 -- a command-line tool: printing is its output.

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pm_embeddings.minilm import MiniLMEncoder

_SERVICES = ("checkout", "payments", "inventory", "billing", "search", "frontend", "ledger", "shipping")
_SYMPTOMS = (
    "{s} p99 latency above {n}s for 5m",
    "{s} 5xx ratio above {n}%",
    "{s} pods restarting {n} times in 10m",
    "{s} consumer lag above {n}000 messages",
    "{s} disk usage above 9{n}%",
)
_DETAILS = (
    "timeout acquiring connection from pool (max=20, in use=20)",
    "x509: certificate has expired or is not yet valid",
    "panic: runtime error: invalid memory address or nil pointer dereference",
    "rpc error: code = DeadlineExceeded desc = context deadline exceeded",
    "no space left on device while writing segment 000{n}.log",
    "OOMKilled: container exceeded its 512Mi memory limit",
)
_CAUSES = (
    "perf: open a DB session per lookup",
    "chore: raise the default log level to debug",
    "refactor: make the metadata field optional",
    "config: tighten the upstream deadline to {n}00ms",
    "feat: cache whole responses in memory",
)


def corpus(count: int, seed: int = 7) -> list[str]:
    """`count` deterministic incident texts from one line to past the model's 256-token limit."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        service, n = rng.choice(_SERVICES), rng.randint(1, 9)
        lines = [rng.choice(_SYMPTOMS).format(s=service, n=n)]
        for _ in range(rng.choice((0, 1, 2, 4, 8, 16))):
            lines.append(
                f"{rng.choice(_DETAILS).format(n=n)} in {rng.choice(_SERVICES)} at 12:{rng.randint(0, 59):02d}"
            )
        lines.append(rng.choice(_CAUSES).format(n=n) + f", shipped with {service}, explains the symptom.")
        texts.append("\n".join(lines))
    return texts


def main(argv: Sequence[str]) -> int:
    """Load the model, embed the corpus `--rounds` times, print the figures (and JSON with --json)."""
    parser = argparse.ArgumentParser(prog="pm_embeddings.bench")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if not 1 <= args.texts <= 100_000 or not 1 <= args.rounds <= 100:
        parser.error("--texts must be 1..100000 and --rounds 1..100")

    started = time.perf_counter()
    encoder = MiniLMEncoder(Path(args.model_dir))
    load_seconds = time.perf_counter() - started

    texts = corpus(args.texts)
    tokens = [len(encoder.tokenizer.encode(t, encoder.max_tokens)) for t in texts]
    batch_seconds = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        encoder.encode(texts)
        batch_seconds.append(time.perf_counter() - started)
    best = min(batch_seconds)

    short = "checkout 5xx ratio above 5% after the payments deploy"
    single = []
    for _ in range(30):
        started = time.perf_counter()
        encoder.encode([short])
        single.append(time.perf_counter() - started)

    result = {
        "load_seconds": round(load_seconds, 3),
        "texts": len(texts),
        "tokens_mean": round(statistics.mean(tokens), 1),
        "tokens_max": max(tokens),
        "batch_seconds_best": round(best, 3),
        "texts_per_second": round(len(texts) / best, 1),
        "tokens_per_second": round(sum(tokens) / best),
        "single_short_text_ms_p50": round(statistics.median(single) * 1000, 1),
        "cpu_count": os.cpu_count(),
    }
    print(f"model load {result['load_seconds']} s (weights and tokenizer from {args.model_dir})")
    print(
        f"batch: {len(texts)} texts (mean {result['tokens_mean']} tokens, max {result['tokens_max']}) in"
        f" {result['batch_seconds_best']} s (best of {args.rounds}): {result['texts_per_second']} texts/s,"
        f" {result['tokens_per_second']} tokens/s"
    )
    print(f"one short text: p50 {result['single_short_text_ms_p50']} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
