"""An offline CLIP tokenizer for the small backbones: byte-level characters, no merges, no download."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


@lru_cache(maxsize=1)
def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins CLIP's byte-level BPE uses for raw bytes, in CLIP's order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    extra = 0
    codes = printable[:]
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_char_tokenizer_files(folder: str | Path, model_max_length: int = 32) -> Path:
    """Write vocab.json, merges.txt and tokenizer_config.json of a character-level CLIP tokenizer."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_alphabet()
    tokens = chars + [c + "</w>" for c in chars] + [BOS, EOS]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


def vocab_size() -> int:
    return 2 * len(_byte_alphabet()) + 2


def build_char_tokenizer(folder: str | Path, model_max_length: int = 32) -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    write_char_tokenizer_files(folder, model_max_length)
    return CLIPTokenizer.from_pretrained(str(folder))
