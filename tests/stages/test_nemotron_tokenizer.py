"""Token counters: the approximate default, local HF tokenizer.json, cached-only tiktoken."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamsynth.stages.nemotron_cc.tokenizer import (
    ApproxTokenizer,
    HFTokenizer,
    TiktokenTokenizer,
    Tokenizer,
    TokenizerUnavailableError,
    load_tokenizer,
    missing_tiktoken_files,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("   \n\t ", 0),
        ("The cat sat.", 4),  # three words + "."
        ("internationalization", 4),  # 20 chars, split every 5
        ("1234567", 3),  # digits grouped by three
        ("**bold**", 3),  # "**" + word + "**"
        ("https://example.org", 6),  # https, "://" (2), example, ".", org
        ("caf\u00e9", 2),  # non-ASCII word: every 2 chars
    ],
)
def test_approx_counts(text: str, expected: int) -> None:
    assert ApproxTokenizer().count(text) == expected


def test_approx_is_close_to_bpe_on_english_prose() -> None:
    # cl100k_base counts 52 tokens for this paragraph (measured offline); stay within 20%.
    text = (
        "The Industrial Revolution began in Great Britain in the late eighteenth century. "
        "Mechanized spinning, steam power and new iron-making processes transformed "
        "manufacturing, and within decades the changes had spread to continental Europe "
        "and the United States, reshaping economies, cities and daily life."
    )
    assert 42 <= ApproxTokenizer().count(text) <= 62


def test_approx_satisfies_protocol() -> None:
    tokenizer: Tokenizer = load_tokenizer("approx")
    assert isinstance(tokenizer, ApproxTokenizer)
    assert isinstance(tokenizer, Tokenizer)
    assert tokenizer.name == "approx"


@pytest.mark.parametrize("spec", ["", "bogus", "hf:", "tiktoken:", "approx:x"])
def test_load_tokenizer_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError, match="invalid tokenizer spec"):
        load_tokenizer(spec)


def test_hf_tokenizer_from_local_file(tmp_path: Path) -> None:
    import tokenizers  # the dev extra installs it: no skip without it

    model = tokenizers.models.WordLevel(
        {"[UNK]": 0, "hello": 1, "world": 2, "!": 3}, unk_token="[UNK]"
    )
    hf = tokenizers.Tokenizer(model)
    hf.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))

    tokenizer = load_tokenizer(f"hf:{path}")
    assert isinstance(tokenizer, HFTokenizer)
    assert tokenizer.name == f"hf:{path}"
    assert tokenizer.count("hello world !") == 3
    assert tokenizer.count("hello unknown words") == 3
    assert tokenizer.count("") == 0


def test_hf_tokenizer_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TokenizerUnavailableError, match="not found"):
        HFTokenizer.from_file(tmp_path / "absent.json")


def test_tiktoken_never_downloads_an_uncached_encoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    assert missing_tiktoken_files("cl100k_base") != []
    with pytest.raises(TokenizerUnavailableError, match="not cached locally"):
        load_tokenizer("tiktoken:cl100k_base")
    assert list(tmp_path.iterdir()) == []  # nothing was fetched into the cache


def test_tiktoken_disabled_cache_and_unknown_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken would always download
    with pytest.raises(TokenizerUnavailableError, match="not cached locally"):
        TiktokenTokenizer("o200k_base")
    with pytest.raises(TokenizerUnavailableError, match="unknown tiktoken encoding"):
        TiktokenTokenizer("no_such_encoding")


def _bos_tokenizer_file(tmp_path: Path) -> Path:
    import tokenizers  # the dev extra installs it: no skip without it

    model = tokenizers.models.WordLevel(
        {"[UNK]": 0, "<s>": 1, "hello": 2, "world": 3}, unk_token="[UNK]"
    )
    hf = tokenizers.Tokenizer(model)
    hf.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    hf.add_special_tokens(["<s>"])
    hf.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )  # a Llama-style file: encode() adds BOS
    path = tmp_path / "bos.json"
    hf.save(str(path))
    return path


def test_hf_counts_follow_the_tokenizers_default_for_special_tokens(tmp_path: Path) -> None:
    path = _bos_tokenizer_file(tmp_path)
    default = load_tokenizer(f"hf:{path}")
    assert isinstance(default, HFTokenizer)
    # As Curator's tokenizer.encode(text): BOS counted, in every count (even of "").
    assert default.count("hello world") == 3 and default.count("") == 1
    assert default.count_plain("hello world") == 2  # Curator's tokenize(): text only
    off = load_tokenizer(f"hf:{path}", special_tokens=False)
    assert off.count("hello world") == 2 and off.count("") == 0


def test_count_plain_falls_back_to_count() -> None:
    from streamsynth.stages.nemotron_cc.tokenizer import count_plain

    assert count_plain(ApproxTokenizer(), "The cat sat.") == 4
