"""The WordPiece tokenizer's rules on a small vocabulary (the real vocabulary's ids are held to
the reference in minilm_test.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pm_embeddings import WordPieceTokenizer

_TOKENS = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "cafe", "deploy", "##ed", "##ing", "fail", "##s", "un", "##affect", "##able", "(", ")", ".", ",", "-", "$",
    "数", "据", "\u03c3", "a", "b", "x", "##x", "timeout", "=", "30",
]  # fmt: skip


def _tokenizer(**options: object) -> WordPieceTokenizer:
    return WordPieceTokenizer({t: i for i, t in enumerate(_TOKENS)}, **options)  # type: ignore[arg-type]


def test_words_split_into_the_longest_known_pieces() -> None:
    assert _tokenizer().tokenize("deployed unaffectable fails") == [
        "deploy", "##ed", "un", "##affect", "##able", "fail", "##s",
    ]  # fmt: skip


def test_every_punctuation_character_is_its_own_word() -> None:
    assert _tokenizer().tokenize("(timeout=30s).$") == ["(", "timeout", "=", "30", "##s", ")", ".", "$"]


def test_case_and_accents_are_removed() -> None:
    assert _tokenizer().tokenize("CAFÉ Café") == ["cafe", "cafe"]


def test_a_cased_tokenizer_keeps_case_and_accents() -> None:
    assert _tokenizer(lowercase=False).tokenize("Café") == ["[UNK]"]


def test_sigma_is_lower_cased_one_character_at_a_time() -> None:
    # Python's str.lower() would make a final sigma "ς"; the reference tokenizer does not.
    assert _tokenizer().tokenize("\u03a3") == ["\u03c3"]  # capital and small sigma


def test_cjk_ideographs_are_words_of_their_own() -> None:
    assert _tokenizer().tokenize("数据x") == ["数", "据", "x"]


def test_control_characters_vanish_and_whitespace_separates() -> None:
    assert _tokenizer().tokenize("a\x00\x07b\u200bx\tb\nx\u3000a") == ["[UNK]", "b", "x", "a"]


def test_a_word_that_cannot_be_covered_is_unknown_as_a_whole() -> None:
    assert _tokenizer().tokenize("deployq fail") == ["[UNK]", "fail"]


def test_a_word_over_100_characters_is_unknown() -> None:
    assert _tokenizer().tokenize("x" * 100) == ["x", *["##x"] * 99]
    assert _tokenizer().tokenize("x" * 101) == ["[UNK]"]


def test_special_tokens_written_in_the_text_keep_their_ids() -> None:
    tokenizer = _tokenizer()
    assert tokenizer.tokenize("fail[SEP]deploy [MASK]") == ["fail", "[SEP]", "deploy", "[MASK]"]
    # Only the exact spelling: lower case is ordinary text.
    assert tokenizer.tokenize("[sep]") == ["[UNK]", "[UNK]", "[UNK]"]


def test_encode_wraps_in_cls_and_sep_and_cuts_to_the_limit() -> None:
    tokenizer = _tokenizer()
    ids = tokenizer.encode("fail " * 10, max_length=5)
    assert ids == [2, 9, 9, 9, 3]
    assert tokenizer.encode("", max_length=5) == [2, 3]
    with pytest.raises(ValueError, match="room"):
        tokenizer.encode("x", max_length=1)


def test_a_vocabulary_without_the_special_tokens_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\[CLS\]"):
        WordPieceTokenizer({"[PAD]": 0, "[UNK]": 1, "[SEP]": 2, "[MASK]": 3})


def test_a_model_directory_gives_vocabulary_and_options(tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_text("\n".join(_TOKENS) + "\n")
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    tokenizer = WordPieceTokenizer.from_model_dir(tmp_path)
    assert tokenizer.vocab_size == len(_TOKENS)
    assert tokenizer.tokenize("Deploy deploy") == ["[UNK]", "deploy"]
