"""Prompts -> umT5 embeddings, as Wan2.1 and diffusers' Wan pipelines make them.

``TextEncoder.encode(["a cat", ...])`` returns [B, text_len, d_model] float32 (text_len 512, d_model
4096 for umT5-XXL):

1. each prompt is cleaned like diffusers' ``prompt_clean`` / Wan's ``clean='whitespace'``:
   ``ftfy.fix_text``, ``html.unescape`` twice, strip, runs of whitespace -> one space;
2. tokenized with the model's ``tokenizer.json`` (the ``tokenizers`` package, no transformers): the
   post-processor appends ``</s>``, sequences are truncated to ``text_len`` (``</s>`` included) and
   padded with ``<pad>`` to ``text_len``; the mask marks the real tokens;
3. encoded by the umT5 encoder with padded keys masked out;
4. every position at or after the prompt's own length (seq_len = mask sum) is set to zero, exactly as
   ``WanPipeline._get_t5_prompt_embeds`` (and Wan's ``u[:v]`` then zero padding) do.

Repeated prompts (the negative prompt, above all) come from a small LRU cache keyed by the cleaned
prompt; the network is jit-compiled once per batch size.

Checkpoints (converting, saving, ``load_text_encoder``) are in ``vdot_jax.weights.text_encoder``; this module
is the model side only and imports nothing from ``weights/``.
"""

from __future__ import annotations

import collections
import html
import json
import os
import re
import sys
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vdot_jax.errors import CheckpointError
from vdot_jax.models.umt5 import UMT5Config, UMT5EncoderModel

TEXT_LEN = 512  # Wan2.1's text_len


# --------------------------------------------------------------------------------------------------
# Prompt cleaning and tokenization


def clean_prompt(text: str) -> str:
    """diffusers' ``prompt_clean`` (= Wan's ``clean='whitespace'``): fix mojibake, unescape HTML,
    collapse whitespace."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


def _special_token(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def read_json(path: Path) -> dict:
    """A JSON file as a dict ({} when absent); invalid JSON is a ``CheckpointError`` naming the file."""
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None


def tokenizer_dir(path: str | os.PathLike) -> Path:
    """The directory of a tokenizer given as a folder or as its ``tokenizer.json``; raises if unusable."""
    path = Path(path)
    if path.is_file() and path.name == "tokenizer.json":
        path = path.parent
    if not path.is_dir():
        raise CheckpointError(
            f"tokenizer directory {path} does not exist (expected a folder with the umT5 tokenizer.json, e.g. "
            "google/umt5-xxl/ from the Wan release or tokenizer/ of a diffusers pipeline)"
        )
    if not (path / "tokenizer.json").exists():
        have = ", ".join(sorted(p.name for p in path.iterdir())[:6]) or "nothing"
        raise CheckpointError(
            f"tokenizer directory {path} has no tokenizer.json (it has: {have}); the umT5 tokenizer folder "
            "(google/umt5-xxl/ in the Wan release, tokenizer/ in a diffusers pipeline) includes one"
        )
    return path


class PromptTokenizer:
    """``tokenizer.json`` -> fixed-length ids and mask, as transformers' fast tokenizer with
    ``padding="max_length", truncation=True, max_length=text_len, add_special_tokens=True``."""

    def __init__(self, path: str | os.PathLike, text_len: int = TEXT_LEN):
        from tokenizers import Tokenizer

        self.path = tokenizer_dir(path)
        if text_len <= 0:
            raise ValueError(f"text_len must be positive, got {text_len}")
        self.text_len = int(text_len)
        try:
            tok = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        except Exception as e:  # the tokenizers package raises a bare Exception on bad files
            raise CheckpointError(f"{self.path / 'tokenizer.json'} is not a readable tokenizer ({e})") from None
        cfg = read_json(self.path / "tokenizer_config.json")
        special = read_json(self.path / "special_tokens_map.json")
        pad = _special_token(cfg.get("pad_token")) or _special_token(special.get("pad_token"))
        if pad is None:  # fall back on the padding stored in tokenizer.json, then T5's "<pad>"
            pad = (read_json(self.path / "tokenizer.json").get("padding") or {}).get("pad_token") or "<pad>"
        pad_id = tok.token_to_id(pad)
        if pad_id is None:
            raise CheckpointError(f"the tokenizer in {self.path} has no padding token {pad!r} in its vocabulary")
        tok.enable_truncation(max_length=self.text_len, stride=0, strategy="longest_first",
                              direction=cfg.get("truncation_side", "right"))
        tok.enable_padding(direction=cfg.get("padding_side", "right"), pad_id=pad_id, pad_token=pad,
                           length=self.text_len)
        self.tokenizer, self.pad_token, self.pad_id = tok, pad, pad_id

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Already-cleaned texts -> (ids [B, text_len] int32, mask [B, text_len] int32)."""
        encs = self.tokenizer.encode_batch(list(texts), add_special_tokens=True)
        if not getattr(self, "_warned", False) and any(e.overflowing for e in encs):
            self._warned = True  # once per tokenizer: a benchmark of long prompts would repeat it on every row
            print(f"warning: a prompt is longer than {self.text_len} tokens and was cut to {self.text_len} (the text "
                  "encoder's limit); the rest of it is ignored", file=sys.stderr, flush=True)
        ids = np.asarray([e.ids for e in encs], np.int32).reshape(len(encs), self.text_len)
        mask = np.asarray([e.attention_mask for e in encs], np.int32).reshape(len(encs), self.text_len)
        return ids, mask


# --------------------------------------------------------------------------------------------------
# The encoder with its cache


class TextEncoder:
    """umT5 encoder + tokenizer + prompt cache: ``encode(prompts) -> [B, text_len, d_model]`` float32."""

    def __init__(self, model: UMT5EncoderModel, tokenizer: PromptTokenizer | str | os.PathLike,
                 text_len: int | None = None, cache_size: int = 16):
        if not isinstance(tokenizer, PromptTokenizer):
            tokenizer = PromptTokenizer(tokenizer, text_len or TEXT_LEN)
        elif text_len is not None and text_len != tokenizer.text_len:
            tokenizer = PromptTokenizer(tokenizer.path, text_len)
        self.model, self.tokenizer = model, tokenizer
        self.cache_size = int(cache_size)
        self._cache: collections.OrderedDict[str, jax.Array] = collections.OrderedDict()
        self.stats = {"hits": 0, "misses": 0, "network_calls": 0}
        self._compile()

    @property
    def text_len(self) -> int:
        return self.tokenizer.text_len

    @property
    def config(self) -> UMT5Config:
        return self.model.cfg

    def _compile(self):
        graphdef, state = nnx.split(self.model)
        self._state = state

        def run(state, ids, mask):
            h = nnx.merge(graphdef, state)(ids, mask)
            seq_len = jnp.sum(mask > 0, axis=1)
            keep = jnp.arange(ids.shape[1])[None, :] < seq_len[:, None]
            return jnp.where(keep[..., None], h, 0.0)

        self._run = jax.jit(run)  # one compilation per (batch, length)

    def set_runtime(self, **changes) -> "TextEncoder":
        """Change the model's runtime (compute dtype, remat); recompiles and empties the cache."""
        self.model.set_runtime(**changes)
        self._compile()
        self.clear_cache()
        return self

    def clear_cache(self) -> None:
        self._cache.clear()

    def place(self, device: jax.Device | jax.sharding.Sharding) -> "TextEncoder":
        """Move the weights to ``device`` (e.g. ``jax.devices("cpu")[0]`` to hold them in host memory between
        prompts, and back to the accelerator to encode). The compiled program and the prompt cache are kept."""
        self._state = jax.device_put(self._state, device)
        nnx.update(self.model, self._state)
        return self

    def tokenize(self, prompts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Clean and tokenize: (ids, mask), each [B, text_len] int32."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return self.tokenizer([clean_prompt(p) for p in prompts])

    def encode_ids(self, ids, mask) -> jax.Array:
        """Token ids and mask [B, L] -> embeddings [B, L, d_model] float32, zero after each seq_len."""
        ids, mask = np.asarray(ids, np.int32), np.asarray(mask, np.int32)
        if ids.ndim != 2 or ids.shape != mask.shape:
            raise ValueError(f"ids and mask must both be [batch, length]; got {ids.shape} and {mask.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}); got {ids.min()}..{ids.max()}")
        self.stats["network_calls"] += 1
        return self._run(self._state, jnp.asarray(ids), jnp.asarray(mask))

    def encode(self, prompts: str | Sequence[str]) -> jax.Array:
        """Prompts -> [B, text_len, d_model] float32, each row as diffusers' ``_get_t5_prompt_embeds``."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("encode() needs at least one prompt")
        cleaned = [clean_prompt(p) for p in prompts]
        found: dict[str, jax.Array] = {}
        for p in cleaned:
            if p in self._cache and p not in found:
                self._cache.move_to_end(p)
                found[p] = self._cache[p]
        new = list(dict.fromkeys(p for p in cleaned if p not in found))
        self.stats["hits"] += len(cleaned) - sum(cleaned.count(p) for p in new)
        self.stats["misses"] += len(new)
        if new:
            emb = self.encode_ids(*self.tokenizer(new))
            for i, p in enumerate(new):
                found[p] = emb[i]
                if self.cache_size > 0:
                    self._cache[p] = emb[i]
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return jnp.stack([found[p] for p in cleaned])

    __call__ = encode
