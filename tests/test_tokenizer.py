"""Tests for mvclip's CLIP BPE tokenizer.

The parity fixture holds open_clip's ``SimpleTokenizer`` output for a corpus of
captions; it was produced outside this environment by
``tests/fixtures/make_tokenizer_fixture.py`` (see its docstring for the commands).
"""

from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from mvclip import tokenizer as tk
from mvclip.tokenizer import CONTEXT_LENGTH, EOT, SOT, VOCAB_SIZE, ClipTokenizer, tokenize

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def fixture() -> dict:
    return json.loads(gzip.decompress((FIXTURES / "tokenizer_parity.json.gz").read_bytes()))


@pytest.fixture(scope="module")
def tok() -> ClipTokenizer:
    return ClipTokenizer()


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_tokenizer_fixture", FIXTURES / "make_tokenizer_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _trim(row: list[int]) -> list[int]:
    while row and row[-1] == 0:
        row.pop()
    return row


# -- the fixture itself --------------------------------------------------------
def test_fixture_is_large_and_matches_generator(fixture):
    captions = fixture["captions"]
    assert len(captions) >= 1000
    assert len(fixture["ids"]) == len(fixture["encoded"]) == len(fixture["decoded"]) == len(captions)
    assert fixture["meta"]["source"] == "open_clip.tokenizer.SimpleTokenizer"
    # The committed captions are exactly what the generator script builds.
    assert captions == _load_generator().build_corpus()


def test_fixture_covers_the_hard_cases(fixture):
    captions = fixture["captions"]
    encoded = fixture["encoded"]
    checks = {
        "empty": any(c == "" for c in captions),
        "tab/newline": any("\t" in c for c in captions) and any("\n" in c for c in captions),
        "multiple spaces": any("  " in c.strip() for c in captions),
        "html entity": any("&amp;" in c for c in captions) and any("&quot;" in c for c in captions),
        "mojibake": any("Ã" in c or "â€" in c for c in captions),
        "emoji": any(any(0x1F300 <= ord(ch) <= 0x1FAFF for ch in c) for c in captions),
        "cjk": any(any(0x4E00 <= ord(ch) <= 0x9FFF for ch in c) for c in captions),
        "accents": any("é" in c for c in captions),
        "contractions": all(any(s in c.lower() for c in captions) for s in ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")),
        "decimals": any(any(ch.isdigit() for ch in c) and "." in c for c in captions),
        "over-long": sum(len(e) + 2 > CONTEXT_LENGTH for e in encoded) >= 20,
    }
    assert [name for name, ok in checks.items() if not ok] == []


# -- parity with open_clip ------------------------------------------------------
def test_parity_ids_with_open_clip(fixture):
    captions = fixture["captions"]
    got = tokenize(captions)
    assert got.shape == (len(captions), CONTEXT_LENGTH)
    mismatches = [
        (i, captions[i]) for i, (row, want) in enumerate(zip(got.tolist(), fixture["ids"])) if _trim(row) != want
    ]
    assert not mismatches, f"{len(mismatches)} of {len(captions)} captions differ, e.g. {mismatches[:5]!r}"


def test_parity_encode_with_open_clip(fixture, tok):
    captions = fixture["captions"]
    mismatches = [i for i, (c, want) in enumerate(zip(captions, fixture["encoded"])) if tok.encode(c) != want]
    assert not mismatches, f"{len(mismatches)} of {len(captions)} differ, e.g. {[captions[i] for i in mismatches[:5]]!r}"


def test_parity_decode_with_open_clip(fixture, tok):
    pairs = zip(fixture["encoded"], fixture["decoded"])
    mismatches = [i for i, (ids, want) in enumerate(pairs) if tok.decode(ids) != want]
    assert not mismatches, f"{len(mismatches)} decodes differ, first at {mismatches[:5]}"


def test_known_clip_ids():
    # Independent of the fixture: the ids CLIP's README example produces.
    assert tokenize(["a diagram", "a dog", "a cat"])[:, :4].tolist() == [
        [SOT, 320, 22697, EOT],
        [SOT, 320, 1929, EOT],
        [SOT, 320, 2368, EOT],
    ]


# -- tensor contract ------------------------------------------------------------
def test_single_string_shape_and_dtype():
    out = tokenize("A man rides a bicycle.")
    assert out.shape == (1, CONTEXT_LENGTH)
    assert out.dtype == torch.long


def test_batch_shape_context_length_and_empty_batch():
    assert tokenize(["a", "b c", ""]).shape == (3, CONTEXT_LENGTH)
    assert tokenize(("a", "b"), context_length=16).shape == (2, 16)
    assert tokenize([]).shape == (0, CONTEXT_LENGTH)


def test_start_end_and_padding(tok):
    text = "Two kids play with a red ball at the park."
    ids = tok.encode(text)
    row = tokenize(text)[0].tolist()
    n = len(ids)
    assert row[0] == SOT
    assert row[1 : n + 1] == ids
    assert row[n + 1] == EOT
    assert row[n + 2 :] == [0] * (CONTEXT_LENGTH - n - 2)
    assert tokenize("")[0].tolist() == [SOT, EOT] + [0] * (CONTEXT_LENGTH - 2)


def test_truncation_ends_with_eot(tok):
    text = " ".join(f"a dog runs across field number {i}." for i in range(40))
    ids = tok.encode(text)
    assert len(ids) > CONTEXT_LENGTH
    row = tokenize(text)[0].tolist()
    assert row[CONTEXT_LENGTH - 1] == EOT
    assert row[: CONTEXT_LENGTH - 1] == [SOT] + ids[: CONTEXT_LENGTH - 2]
    assert 0 not in row


@pytest.mark.parametrize("n_words", [74, 75, 76, 77, 100])
def test_truncation_boundary(n_words):
    # 'a' is a single token, so the row needs n_words + 2 positions.
    row = tokenize(" ".join(["a"] * n_words))[0].tolist()
    a = 320
    if n_words + 2 <= CONTEXT_LENGTH:
        assert row[: n_words + 2] == [SOT] + [a] * n_words + [EOT]
    else:
        assert row == [SOT] + [a] * (CONTEXT_LENGTH - 2) + [EOT]


def test_batch_equals_per_item(fixture):
    captions = fixture["captions"][::37]
    batch = tokenize(captions)
    singles = torch.cat([tokenize(c) for c in captions])
    assert torch.equal(batch, singles)


def test_ids_within_vocabulary(fixture, tok):
    out = tokenize(fixture["captions"])
    assert int(out.min()) >= 0 and int(out.max()) < VOCAB_SIZE
    assert tok.vocab_size == VOCAB_SIZE
    assert tok.sot_token_id == SOT and tok.eot_token_id == EOT


def test_non_string_rejected():
    with pytest.raises(TypeError):
        tokenize(["ok", 3])  # type: ignore[list-item]


# -- decode ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "a man is cooking in the kitchen",
        "Two KIDS play   football\tat the park",
        "  the quick brown fox jumps over the lazy dog  ",
        "A surfer rides a huge wave, then falls off! Amazing... (really)",
        "it's 12:30 and they're leaving at 5.45pm; don't wait",
    ],
)
def test_decode_round_trips_normalized_ascii(tok, text):
    normalized = " ".join(text.split()).lower()
    decoded = tok.decode(tok.encode(text))
    # Decoding puts a space after every word piece that ends a word, so compare
    # word-for-word when there is no punctuation and character-for-character otherwise.
    if all(ch.isalnum() or ch.isspace() for ch in text):
        assert decoded.strip() == normalized
    assert decoded.replace(" ", "") == normalized.replace(" ", "")


def test_decode_accepts_tensor(tok):
    ids = tok.encode("a dog")
    assert tok.decode(torch.tensor(ids)) == tok.decode(ids) == "a dog "


# -- packaging and sharing ----------------------------------------------------------
def test_vocab_is_package_data():
    asset = importlib.resources.files("mvclip") / "assets" / "bpe_simple_vocab_16e6.txt.gz"
    assert asset.is_file()
    header = gzip.decompress(asset.read_bytes()).split(b"\n", 1)[0]
    assert header.endswith(b"#version: 0.2")


def test_module_tokenize_uses_one_shared_instance():
    tokenize("warm up")
    assert tk._shared_tokenizer() is tk._shared_tokenizer()


def test_bpe_cache_is_used(tok):
    tok.encode("unusualword")
    word = "unusualword"  # ASCII letters map to themselves in the byte table
    assert word in tok._cache
    assert tok._bpe(word) is tok._cache[word]
