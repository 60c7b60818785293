"""BERT's uncased WordPiece tokenizer over a vocab.txt, as the model's own (Hugging Face fast)
tokenizer does it, so token ids match the ones the model was trained with.

Steps, in the reference's order: special tokens written literally in the text ([CLS], [SEP],
[UNK], [MASK], [PAD]) are split out first and map to their ids; every other span is cleaned
(NUL, U+FFFD and control characters dropped, whitespace made a space), CJK ideographs are
surrounded by spaces, accents are stripped (NFD, non-spacing marks removed), characters are
lower-cased one at a time, the text is split on whitespace and around every punctuation
character, and each word becomes its greedy longest-match-first pieces ("##" marks a
continuation); a word longer than 100 characters, or one that cannot be covered, is [UNK].
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["WordPieceTokenizer"]

_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# The CJK Unified Ideographs blocks BERT isolates (Hangul, kana and others are left alone).
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def _is_control(ch: str) -> bool:
    return ch not in "\t\n\r" and unicodedata.category(ch)[0] == "C"


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(low <= cp <= high for low, high in _CJK_RANGES)


def _is_punctuation(ch: str) -> bool:
    # ASCII symbols such as $ + < = > ^ ` | ~ count as punctuation too, as in BERT.
    cp = ord(ch)
    return 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 or unicodedata.category(ch)[0] == "P"


class WordPieceTokenizer:
    """Text to BERT token ids ([CLS] … [SEP]) with the vocabulary of a model directory."""

    def __init__(
        self,
        vocab: Mapping[str, int],
        *,
        lowercase: bool = True,
        strip_accents: bool | None = None,
        split_cjk: bool = True,
        max_chars_per_word: int = 100,
    ) -> None:
        missing = [t for t in _SPECIAL if t not in vocab]
        if missing:
            raise ValueError(f"the vocabulary lacks the special tokens {', '.join(missing)}")
        self._vocab = dict(vocab)
        self._lowercase = lowercase
        # Unset means "as lowercase", the reference's rule for uncased models.
        self._strip_accents = lowercase if strip_accents is None else strip_accents
        self._split_cjk = split_cjk
        self._max_chars = max_chars_per_word
        self.cls_id = vocab["[CLS]"]
        self.sep_id = vocab["[SEP]"]
        self.pad_id = vocab["[PAD]"]
        self.unk_id = vocab["[UNK]"]
        self._special = re.compile("|".join(re.escape(t) for t in sorted(_SPECIAL, key=len, reverse=True)))

    @classmethod
    def from_model_dir(cls, path: Path) -> WordPieceTokenizer:
        """The tokenizer of a Hugging Face BERT model directory (vocab.txt, tokenizer_config.json)."""
        tokens = (path / "vocab.txt").read_text(encoding="utf-8").split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()
        vocab = {token: index for index, token in enumerate(tokens)}
        config_path = path / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.exists() else {}
        return cls(
            vocab,
            lowercase=bool(config.get("do_lower_case", True)),
            strip_accents=config.get("strip_accents"),
            split_cjk=bool(config.get("tokenize_chinese_chars", True)),
        )

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def encode(self, text: str, max_length: int) -> list[int]:
        """[CLS], the pieces of `text` (cut to fit), [SEP]: at most `max_length` ids."""
        if max_length < 2:
            raise ValueError("max_length must leave room for [CLS] and [SEP]")
        ids = self.piece_ids(text)[: max_length - 2]
        return [self.cls_id, *ids, self.sep_id]

    def piece_ids(self, text: str) -> list[int]:
        """The ids of `text`'s pieces, without [CLS] and [SEP]."""
        ids: list[int] = []
        position = 0
        for match in self._special.finditer(text):
            ids.extend(self._vocab[p] for p in self._pieces(text[position : match.start()]))
            ids.append(self._vocab[match.group()])
            position = match.end()
        ids.extend(self._vocab[p] for p in self._pieces(text[position:]))
        return ids

    def tokenize(self, text: str) -> list[str]:
        """The pieces of `text` as strings (special tokens written in the text included)."""
        inverse = {index: token for token, index in self._vocab.items()}
        return [inverse[i] for i in self.piece_ids(text)]

    def _pieces(self, text: str) -> Iterable[str]:
        for word in self._words(self._normalize(text)):
            yield from self._word_pieces(word)

    def _normalize(self, text: str) -> str:
        out: list[str] = []
        for ch in text:
            if ch in "\x00\ufffd" or _is_control(ch):
                continue
            if ch.isspace():
                out.append(" ")
            elif self._split_cjk and _is_cjk(ch):
                out.append(f" {ch} ")
            else:
                out.append(ch)
        normalized = "".join(out)
        if self._strip_accents:
            normalized = "".join(c for c in unicodedata.normalize("NFD", normalized) if unicodedata.category(c) != "Mn")
        if self._lowercase:
            # Character by character, as the reference does (no final-sigma rule).
            normalized = "".join(c.lower() for c in normalized)
        return normalized

    @staticmethod
    def _words(text: str) -> Iterable[str]:
        for chunk in text.split():
            start = 0
            for index, ch in enumerate(chunk):
                if _is_punctuation(ch):
                    if start < index:
                        yield chunk[start:index]
                    yield ch
                    start = index + 1
            if start < len(chunk):
                yield chunk[start:]

    def _word_pieces(self, word: str) -> list[str]:
        if len(word) > self._max_chars:
            return ["[UNK]"]
        pieces: list[str] = []
        start = 0
        while start < len(word):
            end = len(word)
            piece = None
            while start < end:
                candidate = word[start:end] if start == 0 else f"##{word[start:end]}"
                if candidate in self._vocab:
                    piece = candidate
                    break
                end -= 1
            if piece is None:
                return ["[UNK]"]
            pieces.append(piece)
            start = end
        return pieces
