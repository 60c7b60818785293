"""all-MiniLM-L6-v2 in numpy: the BERT encoder's forward pass, mean pooling, L2 normalisation.

The weights are read from the model directory's model.safetensors, the architecture from its
config.json (layers, heads, hidden size, LayerNorm epsilon), the sequence limit from
sentence_bert_config.json (256 tokens) and the pooling from 1_Pooling/config.json. The result
equals sentence-transformers' `encode` to within float32 rounding (minilm_test.py holds it to
reference vectors computed with PyTorch).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pm_embeddings.safetensors import load_safetensors
from pm_embeddings.wordpiece import WordPieceTokenizer

__all__ = ["MODEL_FILES", "BertConfig", "MiniLMEncoder", "ModelFilesMissing"]

# What a model directory must hold.
MODEL_FILES = ("config.json", "model.safetensors", "vocab.txt", "sentence_bert_config.json")
# A forward pass takes texts of similar length (sorted, and the longest at most PAD_RATIO times
# the shortest, so padding wastes little) up to TOKEN_BUDGET padded tokens (activations of a few
# tens of MB).
TOKEN_BUDGET = 4096
PAD_RATIO = 1.25


class ModelFilesMissing(FileNotFoundError):
    """The model directory does not exist or lacks a file the model needs."""


@dataclass(frozen=True, slots=True)
class BertConfig:
    """The parts of a BERT config.json the forward pass needs."""

    hidden_size: int
    layers: int
    heads: int
    intermediate_size: int
    layer_norm_eps: float
    max_positions: int

    @classmethod
    def from_json(cls, config: Mapping[str, Any]) -> BertConfig:
        """Validate a config.json as a BERT encoder this implementation can run."""
        if config.get("model_type") != "bert":
            raise ValueError(f"model_type {config.get('model_type')!r} is not bert")
        if config.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"hidden_act {config.get('hidden_act')!r} is not supported (only gelu)")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported")
        parsed = cls(
            hidden_size=int(config["hidden_size"]),
            layers=int(config["num_hidden_layers"]),
            heads=int(config["num_attention_heads"]),
            intermediate_size=int(config["intermediate_size"]),
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
            max_positions=int(config["max_position_embeddings"]),
        )
        if parsed.hidden_size % parsed.heads:
            raise ValueError(f"hidden_size {parsed.hidden_size} is not a multiple of {parsed.heads} heads")
        return parsed


@dataclass(frozen=True, slots=True)
class _Layer:
    qkv: np.ndarray  # (hidden, 3 * hidden): query, key and value projections side by side
    qkv_bias: np.ndarray
    out: np.ndarray
    out_bias: np.ndarray
    ln1: tuple[np.ndarray, np.ndarray]
    up: np.ndarray
    up_bias: np.ndarray
    down: np.ndarray
    down_bias: np.ndarray
    ln2: tuple[np.ndarray, np.ndarray]


_ERF_P = np.float32(0.3275911)
_ERF_A = tuple(np.float32(a) for a in (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592))
_SQRT_HALF = np.float32(1.0 / math.sqrt(2.0))


def _gelu(x: np.ndarray) -> np.ndarray:
    """The exact (erf) GELU BERT was trained with, not the tanh approximation; erf to about 1e-7
    (Abramowitz and Stegun 7.1.26: numpy has no erf, and float32 needs no more). In place on `x`."""
    a = np.abs(x) * _SQRT_HALF
    t = 1.0 / (1.0 + _ERF_P * a)
    poly = np.full_like(t, _ERF_A[0])
    for coefficient in _ERF_A[1:]:
        poly *= t
        poly += coefficient
    poly *= t
    np.square(a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)
    poly *= a  # 1 - erf(|x|/sqrt 2)
    # gelu(x) = x * (1 + erf(x/sqrt 2)) / 2: for x >= 0 that is x * (1 - poly/2), else x * poly/2.
    poly *= np.float32(0.5)
    half = np.where(x >= 0, np.float32(1.0) - poly, poly)
    x *= half
    return x


def _layer_norm(x: np.ndarray, params: tuple[np.ndarray, np.ndarray], eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    variance = (centered * centered).mean(axis=-1, keepdims=True)
    weight, bias = params
    normalized: np.ndarray = centered / np.sqrt(variance + np.float32(eps)) * weight + bias
    return normalized


def _batches(lengths: Sequence[int]) -> list[list[int]]:
    """Indexes of texts grouped for forward passes: by length, within PAD_RATIO and TOKEN_BUDGET."""
    batches: list[list[int]] = []
    current: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda k: lengths[k]):
        if current and (
            lengths[index] > PAD_RATIO * lengths[current[0]] or (len(current) + 1) * lengths[index] > TOKEN_BUDGET
        ):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


class MiniLMEncoder:
    """Sentence embeddings from a sentence-transformers BERT model directory (mean pooling,
    normalised), computed with numpy on the CPU. Thread-safe: it holds no mutable state."""

    def __init__(self, model_dir: Path) -> None:
        missing = [name for name in MODEL_FILES if not (model_dir / name).is_file()]
        if missing:
            raise ModelFilesMissing(f"{model_dir} lacks {', '.join(missing)}")
        self.config = BertConfig.from_json(json.loads((model_dir / "config.json").read_text()))
        sentence_config = json.loads((model_dir / "sentence_bert_config.json").read_text())
        self.max_tokens = min(int(sentence_config.get("max_seq_length", 256)), self.config.max_positions)
        pooling_path = model_dir / "1_Pooling" / "config.json"
        if pooling_path.is_file():
            pooling = json.loads(pooling_path.read_text())
            if not pooling.get("pooling_mode_mean_tokens", True) or any(
                pooling.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens")
            ):
                raise ValueError(f"{pooling_path}: only mean pooling is supported")
        self.tokenizer = WordPieceTokenizer.from_model_dir(model_dir)
        self._load_weights(load_safetensors(model_dir / "model.safetensors"))

    @property
    def dimensions(self) -> int:
        return self.config.hidden_size

    def _load_weights(self, tensors: Mapping[str, np.ndarray]) -> None:
        # Checkpoints saved from BertForX carry a "bert." prefix; sentence-transformers' do not.
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in tensors else ""

        def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
            key = prefix + name
            if key not in tensors:
                raise ValueError(f"model.safetensors lacks the tensor {key}")
            value = tensors[key]
            if tuple(value.shape) != shape:
                raise ValueError(f"{key} has shape {tuple(value.shape)}, expected {shape}")
            # A copy, so the file's bytes (which views would keep alive) are freed after loading.
            return np.array(value, dtype=np.float32, copy=True)

        c = self.config
        h, i = c.hidden_size, c.intermediate_size
        self._word = get("embeddings.word_embeddings.weight", (self.tokenizer.vocab_size, h))
        self._position = get("embeddings.position_embeddings.weight", (c.max_positions, h))
        token_types = tensors.get(prefix + "embeddings.token_type_embeddings.weight")
        # Every token is segment 0 for a single sentence.
        self._segment = (
            np.zeros(h, np.float32) if token_types is None else np.array(token_types[0], np.float32, copy=True)
        )
        self._embedding_ln = (get("embeddings.LayerNorm.weight", (h,)), get("embeddings.LayerNorm.bias", (h,)))
        self._layers: list[_Layer] = []
        for n in range(c.layers):
            p = f"encoder.layer.{n}."
            # Linear layers store (out, in); the transposes are taken once here, not per call, and
            # the attention's 1/sqrt(head width) is folded into the query projection.
            scale = np.float32(1.0 / math.sqrt(h // c.heads))
            qkv = np.concatenate(
                [get(f"{p}attention.self.{k}.weight", (h, h)).T for k in ("query", "key", "value")], axis=1
            )
            qkv[:, :h] *= scale
            self._layers.append(
                _Layer(
                    qkv=np.ascontiguousarray(qkv),
                    qkv_bias=np.concatenate(
                        [get(f"{p}attention.self.query.bias", (h,)) * scale]
                        + [get(f"{p}attention.self.{k}.bias", (h,)) for k in ("key", "value")]
                    ),
                    out=np.ascontiguousarray(get(f"{p}attention.output.dense.weight", (h, h)).T),
                    out_bias=get(f"{p}attention.output.dense.bias", (h,)),
                    ln1=(
                        get(f"{p}attention.output.LayerNorm.weight", (h,)),
                        get(f"{p}attention.output.LayerNorm.bias", (h,)),
                    ),
                    up=np.ascontiguousarray(get(f"{p}intermediate.dense.weight", (i, h)).T),
                    up_bias=get(f"{p}intermediate.dense.bias", (i,)),
                    down=np.ascontiguousarray(get(f"{p}output.dense.weight", (h, i)).T),
                    down_bias=get(f"{p}output.dense.bias", (h,)),
                    ln2=(get(f"{p}output.LayerNorm.weight", (h,)), get(f"{p}output.LayerNorm.bias", (h,))),
                )
            )

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """One unit-length float32 vector per text, (len(texts), dimensions)."""
        ids = [self.tokenizer.encode(text, self.max_tokens) for text in texts]
        out = np.zeros((len(texts), self.dimensions), np.float32)
        for batch in _batches([len(row) for row in ids]):
            out[batch] = self.encode_ids([ids[k] for k in batch])
        return out

    def encode_ids(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """Pooled, normalised vectors of token-id sequences (each with its [CLS] and [SEP])."""
        length = max(len(row) for row in batch)
        ids = np.full((len(batch), length), self.tokenizer.pad_id, np.int64)
        mask = np.zeros((len(batch), length), np.float32)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1.0
        hidden = self._forward(ids, mask)
        summed = (hidden * mask[:, :, None]).sum(axis=1)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), np.float32(1e-9))
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit: np.ndarray = (pooled / np.maximum(norms, np.float32(1e-12))).astype(np.float32)
        return unit

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        c = self.config
        batch, length = ids.shape
        heads, width = c.heads, c.hidden_size // c.heads
        x = self._word[ids] + self._position[:length] + self._segment
        x = _layer_norm(x, self._embedding_ln, c.layer_norm_eps)
        # Padding gets the lowest float32 score, so its softmax weight is exactly 0.
        padded = bool((mask == 0).any())
        bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]
        for layer in self._layers:
            qkv = x @ layer.qkv + layer.qkv_bias
            qkv = qkv.reshape(batch, length, 3, heads, width).transpose(2, 0, 3, 1, 4)
            query, key, value = qkv[0], qkv[1], qkv[2]
            scores = query @ key.transpose(0, 1, 3, 2)
            if padded:
                scores += bias
            scores -= scores.max(axis=-1, keepdims=True)
            weights = np.exp(scores)
            weights /= weights.sum(axis=-1, keepdims=True)
            context = (weights @ value).transpose(0, 2, 1, 3).reshape(batch, length, c.hidden_size)
            x = _layer_norm(context @ layer.out + layer.out_bias + x, layer.ln1, c.layer_norm_eps)
            inner = _gelu(x @ layer.up + layer.up_bias)
            x = _layer_norm(inner @ layer.down + layer.down_bias + x, layer.ln2, c.layer_norm_eps)
        return x
