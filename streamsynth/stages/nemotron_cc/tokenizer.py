"""Token counters for the Nemotron-CC budgets.

Every budget in the Nemotron-CC recipe (segment sizes, truncation thresholds,
minimum output lengths) is a token count. Which tokenizer counts them is a
deployment choice: ``load_tokenizer`` turns a config string into one.

* ``approx`` (default): :class:`ApproxTokenizer`, a dependency-free regex counter;
* ``hf:/path/to/tokenizer.json``: the model's own tokenizer via the ``tokenizers`` package;
* ``tiktoken:cl100k_base``: an OpenAI encoding, only if its file is already cached locally.

Nothing here downloads anything: workers often run without internet access, and
a tokenizer fetched at start-up is a hidden dependency on a third-party host.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from streamsynth.errors import StreamsynthError


class TokenizerUnavailableError(StreamsynthError, RuntimeError):
    """The requested tokenizer cannot be loaded from local files."""

    error_type = "tokenizer_unavailable"


@runtime_checkable
class Tokenizer(Protocol):
    """Counts the tokens of a text. Implementations must be thread-safe and pure.

    ``count`` counts as the tokenizer encodes a text by default: with the special
    tokens it adds itself (a Llama-style BOS), as NeMo Curator's ``tokenizer.encode``.
    """

    @property
    def name(self) -> str: ...

    def count(self, text: str) -> int: ...


@runtime_checkable
class PlainCounter(Protocol):
    """A tokenizer that can also count a text's own tokens, without special tokens."""

    def count_plain(self, text: str) -> int: ...


def count_plain(tokenizer: Tokenizer, text: str) -> int:
    """The tokens of ``text`` alone (Curator's ``len(tokenizer.tokenize(text))``).

    Falls back to ``count`` for tokenizers that add no special tokens anyway.
    """
    if isinstance(tokenizer, PlainCounter):
        return tokenizer.count_plain(text)
    return tokenizer.count(text)


# A digit run, a run of letters (underscore included), or a run of other visible characters.
_PIECES = re.compile(r"(\d+)|([^\W\d]+)|([^\w\s]+)")


class ApproxTokenizer:
    """A fast approximation of BPE token counts (GPT/Llama-style vocabularies on English).

    The text is cut into pieces; whitespace is free (BPE vocabularies glue a leading
    space to the next word). Per piece:

    * an ASCII word of up to 9 characters is 1 token (common words are whole tokens),
      a longer one ``ceil(len / 5)`` (long words split into ~5-character pieces);
    * a non-ASCII word counts ``ceil(len / 2)``: accented and non-Latin scripts split
      much finer than English (CJK is close to one token per character, so this
      undercounts it; use a real tokenizer for such corpora);
    * a digit run is ``ceil(len / 3)`` (cl100k/Llama-3 group digits by three);
    * a punctuation run is ``ceil(len / 2)`` ("." and "**" are one token, "://" two).

    Calibrated against cl100k_base (Llama 3's vocabulary extends it): on English prose,
    licence text and technical docs it lands within about 5-10% (it ignores whitespace
    runs, so heavily indented text is undercounted). That is enough for budgets that are
    themselves rules of thumb; it is deterministic and has no dependency, so it is the
    default. Use ``hf:`` with the served model's tokenizer for exact budgets.
    """

    name = "approx"

    def count(self, text: str) -> int:
        total = 0
        for digits, word, punct in _PIECES.findall(text):
            if word:
                total += _word_tokens(word)
            elif digits:
                total += math.ceil(len(digits) / 3)
            else:
                total += math.ceil(len(punct) / 2)
        return total

    def __repr__(self) -> str:
        return "ApproxTokenizer()"


def _word_tokens(word: str) -> int:
    if not word.isascii():
        return math.ceil(len(word) / 2)
    return 1 if len(word) <= 9 else math.ceil(len(word) / 5)


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` loaded with the ``tokenizers`` package.

    ``count`` follows the tokenizer's own default for special tokens, as NeMo
    Curator's token filters do (``tokenizer.encode(text)``): a Llama-style file whose
    post-processor adds BOS counts it, so every threshold matches Curator's.
    ``special_tokens=False`` (or ``True``) overrides that for a tokenizer whose
    default does not match how the served model counts.
    """

    def __init__(self, tokenizer: Any, name: str, *, special_tokens: bool | None = None) -> None:
        self._tokenizer = tokenizer
        self._name = name
        self._special_tokens = special_tokens

    @property
    def name(self) -> str:
        return self._name

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, special_tokens: bool | None = None
    ) -> HFTokenizer:
        file = Path(path)
        if not file.is_file():
            raise TokenizerUnavailableError(f"tokenizer file not found: {file}")
        try:
            from tokenizers import Tokenizer as _HFTokenizer
        except ImportError as exc:  # an optional extra
            raise TokenizerUnavailableError(
                "the 'tokenizers' package is required for hf: tokenizers "
                "(pip install 'streamsynth[tokenizers]')"
            ) from exc
        return cls(_HFTokenizer.from_file(str(file)), f"hf:{file}", special_tokens=special_tokens)

    def count(self, text: str) -> int:
        if self._special_tokens is None:
            return len(self._tokenizer.encode(text).ids)  # the tokenizer's default
        return len(self._tokenizer.encode(text, add_special_tokens=self._special_tokens).ids)

    def count_plain(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def __repr__(self) -> str:
        return f"HFTokenizer({self._name!r})"


#: The files tiktoken fetches for each encoding (tiktoken_ext.openai_public); we only
#: check that they are in tiktoken's cache, so that get_encoding() never downloads.
_BLOB = "https://openaipublic.blob.core.windows.net"
_TIKTOKEN_FILES: dict[str, tuple[str, ...]] = {
    "gpt2": (
        f"{_BLOB}/gpt-2/encodings/main/vocab.bpe",
        f"{_BLOB}/gpt-2/encodings/main/encoder.json",
    ),
    "r50k_base": (f"{_BLOB}/encodings/r50k_base.tiktoken",),
    "p50k_base": (f"{_BLOB}/encodings/p50k_base.tiktoken",),
    "p50k_edit": (f"{_BLOB}/encodings/p50k_base.tiktoken",),
    "cl100k_base": (f"{_BLOB}/encodings/cl100k_base.tiktoken",),
    "o200k_base": (f"{_BLOB}/encodings/o200k_base.tiktoken",),
    "o200k_harmony": (f"{_BLOB}/encodings/o200k_base.tiktoken",),
}


def tiktoken_cache_dir() -> str:
    """Where tiktoken caches its files ("" means caching is disabled), as tiktoken decides it."""
    for variable in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if variable in os.environ:
            return os.environ[variable]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def missing_tiktoken_files(encoding: str) -> list[str]:
    """The URLs of ``encoding``'s files that are not in tiktoken's local cache."""
    if encoding not in _TIKTOKEN_FILES:
        raise TokenizerUnavailableError(
            f"unknown tiktoken encoding {encoding!r}; known: {', '.join(sorted(_TIKTOKEN_FILES))}"
        )
    cache = tiktoken_cache_dir()
    if not cache:
        return list(_TIKTOKEN_FILES[encoding])
    return [
        url
        for url in _TIKTOKEN_FILES[encoding]
        if not os.path.isfile(os.path.join(cache, hashlib.sha1(url.encode()).hexdigest()))
    ]


class TiktokenTokenizer:
    """An OpenAI tiktoken encoding, from tiktoken's local cache only.

    Pre-populate the cache (``TIKTOKEN_CACHE_DIR``) where the worker is built; a
    missing file raises :class:`TokenizerUnavailableError` instead of downloading.
    """

    def __init__(self, encoding: str) -> None:
        missing = missing_tiktoken_files(encoding)
        if missing:
            raise TokenizerUnavailableError(
                f"tiktoken encoding {encoding!r} is not cached locally (cache dir "
                f"{tiktoken_cache_dir()!r}; missing {', '.join(missing)}); streamsynth never "
                "downloads it: warm the cache where the image is built, or use 'approx'/'hf:'"
            )
        try:
            import tiktoken
        except ImportError as exc:
            raise TokenizerUnavailableError(
                "the 'tiktoken' package is required for tiktoken: tokenizers "
                "(pip install 'streamsynth[tokenizers]')"
            ) from exc
        self._encoding = tiktoken.get_encoding(encoding)
        self._name = f"tiktoken:{encoding}"

    @property
    def name(self) -> str:
        return self._name

    def count(self, text: str) -> int:
        # disallowed_special=() counts "<|endoftext|>" in a document as text, not an error.
        return len(self._encoding.encode(text, disallowed_special=()))

    def __repr__(self) -> str:
        return f"TiktokenTokenizer({self._name!r})"


def load_tokenizer(spec: str, *, special_tokens: bool | None = None) -> Tokenizer:
    """A tokenizer from a config string: "approx", "hf:/path/tokenizer.json" or "tiktoken:NAME".

    ``special_tokens`` (hf: only; None = the tokenizer's own default) says whether
    counts include the special tokens the tokenizer adds, such as BOS.
    """
    kind, _, argument = spec.strip().partition(":")
    if kind == "approx" and not argument:
        return ApproxTokenizer()
    if kind == "hf" and argument:
        return HFTokenizer.from_file(argument, special_tokens=special_tokens)
    if kind == "tiktoken" and argument:
        return TiktokenTokenizer(argument)
    raise ValueError(
        f"invalid tokenizer spec {spec!r}: expected 'approx', 'hf:/path/to/tokenizer.json' "
        "or 'tiktoken:ENCODING'"
    )
