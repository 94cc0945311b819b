"""CLIP byte-level BPE tokenizer.

MobileViCLIP's text encoder is initialised from CLIP text towers, so its input
ids must be exactly the ids CLIP's tokenizer produces: the same 49,408-entry
vocabulary, the same text cleaning (ftfy, HTML unescaping, whitespace
collapsing, lower-casing), the same pre-tokenisation regex and the same
truncation rule.  Parity with open_clip's ``SimpleTokenizer`` is checked
against a committed fixture (``tests/fixtures/tokenizer_parity.json.gz``).

The merge table ships as package data (``mvclip/assets/bpe_simple_vocab_16e6.txt.gz``).
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Union

import ftfy
import regex
import torch

if TYPE_CHECKING:  # Python 3.11+ location; only needed for annotations.
    from importlib.resources.abc import Traversable

__all__ = [
    "CONTEXT_LENGTH",
    "EOT",
    "SOT",
    "VOCAB_SIZE",
    "ClipTokenizer",
    "tokenize",
]

VOCAB_SIZE = 49408
SOT = 49406  # <start_of_text>
EOT = 49407  # <end_of_text>
CONTEXT_LENGTH = 77

_BPE_ASSET = "bpe_simple_vocab_16e6.txt.gz"
# The merge file holds more merges than CLIP uses; CLIP keeps the first
# 49152 - 256 - 2 of them so that 256 bytes + 256 word-final bytes + merges
# + 2 special tokens add up to VOCAB_SIZE.
_NUM_MERGES = 49152 - 256 - 2
_SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
_WORD_END = "</w>"
# Per-word BPE results are cached; the cap only bounds memory on huge corpora.
_CACHE_LIMIT = 200_000
_NO_RANK = float("inf")

TextInput = Union[str, Sequence[str]]


def _byte_to_unicode() -> dict[int, str]:
    """Map every byte to a printable unicode character.

    BPE works on strings, but must never see whitespace or control characters
    (they would be split away). Printable Latin-1 bytes map to themselves; the
    remaining 68 bytes are moved, in byte order, to code points 256, 257, ...
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\u00a1"), ord("\u00ac") + 1),
        *range(ord("\u00ae"), ord("\u00ff") + 1),
    ]
    table = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


def _clean(text: str) -> str:
    """Normalise text the way CLIP does before splitting it into words.

    ftfy repairs mojibake, HTML entities are unescaped twice (captions scraped
    from the web are often double-escaped), runs of whitespace collapse to a
    single space, and everything is lower-cased.
    """
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


def _default_bpe_path() -> Traversable:
    return importlib.resources.files("mvclip") / "assets" / _BPE_ASSET


def _read_bytes(path: os.PathLike | str | Traversable) -> bytes:
    """Read a filesystem path or an importlib.resources Traversable (zip-safe)."""
    if isinstance(path, (str, os.PathLike)):
        with open(path, "rb") as fh:
            return fh.read()
    return path.read_bytes()


class ClipTokenizer:
    """CLIP's byte-level BPE tokenizer (49,408 ids, start 49406, end 49407).

    Args:
        bpe_path: gzip-compressed merge file; defaults to the copy shipped with
            mvclip.
    """

    def __init__(
        self, bpe_path: os.PathLike | str | Traversable | None = None
    ) -> None:
        path = _default_bpe_path() if bpe_path is None else bpe_path
        lines = gzip.decompress(_read_bytes(path)).decode("utf-8").split("\n")
        # Line 0 is a version header; then one "left right" merge per line.
        merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]

        self.byte_encoder = _byte_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        base = list(self.byte_encoder.values())
        vocab = base + [c + _WORD_END for c in base]
        vocab += ["".join(m) for m in merges]
        vocab += list(_SPECIAL_TOKENS)
        if len(vocab) != VOCAB_SIZE:
            raise ValueError(f"{path}: expected {VOCAB_SIZE} tokens, got {len(vocab)}")

        self.encoder: dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        self.decoder: dict[int, str] = {i: tok for tok, i in self.encoder.items()}
        self.bpe_ranks: dict[tuple[str, str], int] = {m: i for i, m in enumerate(merges)}
        self.sot_token_id = self.encoder[_SPECIAL_TOKENS[0]]
        self.eot_token_id = self.encoder[_SPECIAL_TOKENS[1]]
        self.vocab_size = len(self.encoder)
        # Special-token spellings in the text are kept whole (CLIP does the same).
        self._cache: dict[str, tuple[str, ...]] = {t: (t,) for t in _SPECIAL_TOKENS}
        # Words are letter runs, single digits, or runs of other non-space
        # characters; English contractions are split off. IGNORECASE matches
        # CLIP's compiled pattern exactly.
        specials = "|".join(_SPECIAL_TOKENS)
        self._pattern = regex.compile(
            specials + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    # -- BPE -------------------------------------------------------------
    def _bpe(self, word: str) -> tuple[str, ...]:
        """Split one byte-encoded word into vocabulary pieces (cached per word)."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached

        symbols = [*word[:-1], word[-1] + _WORD_END]
        ranks = self.bpe_ranks
        while len(symbols) > 1:
            # Apply the earliest-learned merge present in the word, everywhere
            # it occurs (left to right, non-overlapping).
            best = min(
                zip(symbols, symbols[1:]),
                key=lambda pair: ranks.get(pair, _NO_RANK),
            )
            if best not in ranks:
                break
            first, second = best
            merged: list[str] = []
            i, n = 0, len(symbols)
            while i < n:
                if i < n - 1 and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged

        result = tuple(symbols)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache = {t: (t,) for t in _SPECIAL_TOKENS}
        self._cache[word] = result
        return result

    # -- public API ------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without start/end tokens or padding."""
        ids: list[int] = []
        byte_encoder = self.byte_encoder
        for word in self._pattern.findall(_clean(text)):
            encoded = "".join(byte_encoder[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self._bpe(encoded))
        return ids

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Text for ``ids``; word ends become spaces, invalid UTF-8 is replaced.

        Every id is decoded as given, padding and special tokens included.
        """
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        text = "".join(self.decoder[int(i)] for i in ids)
        raw = bytearray(self.byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace(_WORD_END, " ")

    def __call__(self, texts: TextInput, context_length: int = CONTEXT_LENGTH) -> torch.LongTensor:
        """Tokenize to a ``(N, context_length)`` LongTensor, zero-padded.

        Each row is ``[SOT, *encode(text), EOT]``; over-long rows are cut to
        ``context_length`` and their last position overwritten with EOT, as
        CLIP does, so the text tower can always pool at the EOT position.
        """
        if isinstance(texts, str):
            texts = [texts]
        if context_length < 1:
            raise ValueError(f"context_length must be >= 1, got {context_length}")
        rows: list[list[int]] = []
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"expected str, got {type(text).__name__}")
            row = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(row) > context_length:
                row = row[:context_length]
                row[-1] = self.eot_token_id
            else:
                row.extend([0] * (context_length - len(row)))
            rows.append(row)
        if not rows:
            return torch.zeros(0, context_length, dtype=torch.long)
        return torch.tensor(rows, dtype=torch.long)


@functools.lru_cache(maxsize=None)
def _shared_tokenizer() -> ClipTokenizer:
    # Built on first use: loading the merge table takes a fraction of a second
    # and importing mvclip should not pay for it.
    return ClipTokenizer()


def tokenize(texts: TextInput, context_length: int = CONTEXT_LENGTH) -> torch.LongTensor:
    """CLIP token ids for one string or a list of strings, shape ``(N, context_length)``."""
    return _shared_tokenizer()(texts, context_length=context_length)
