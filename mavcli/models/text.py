"""Text encoder C_x and the paired image encoder (Make-A-Video section 3.1; CLIP, Radford et
al. 2021): a word-level tokenizer, a small transformer giving token embeddings and a pooled
text embedding, and an image encoder trained contrastively with it. The image-embedding space
they share is what the prior P targets and what the keyframe decoder D^t is conditioned on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mavcli.errors import PackError, UserInputError
from mavcli.nn.attention import Attention, FeedForward
from mavcli.nn.norm import group_norm

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)
_WORD = re.compile(r"[a-z0-9]+")


class Tokenizer:
    """Lower-cased word tokenizer with a fixed vocabulary (saved with the pack as JSON).

    `encode(text) -> (ids, unknown_words)`: ids are `[BOS, words..., EOS]`; words outside the
    vocabulary become UNK and are reported, never silently dropped.
    """

    def __init__(self, vocab: list[str], max_len: int = 24) -> None:
        if list(vocab[: len(SPECIALS)]) != list(SPECIALS):
            raise PackError(f"tokenizer vocabulary must start with {SPECIALS}")
        if len(set(vocab)) != len(vocab):
            raise PackError("tokenizer vocabulary has duplicate words")
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.max_len = max_len

    @classmethod
    def from_texts(cls, texts, max_len: int = 24) -> Tokenizer:
        words = sorted({w for t in texts for w in _WORD.findall(t.lower())})
        return cls([*SPECIALS, *words], max_len)

    @staticmethod
    def words(text: str) -> list[str]:
        return _WORD.findall(text.lower())

    def encode(self, text: str) -> tuple[list[int], list[str]]:
        words = self.words(text)
        if not words:
            raise UserInputError("the prompt has no words; describe the video, e.g. 'a red circle moving left on a black background'")
        if len(words) > self.max_len - 2:
            raise UserInputError(
                f"the prompt has {len(words)} words; this pack reads at most {self.max_len - 2}. Shorten it."
            )
        unknown = [w for w in words if w not in self.index]
        ids = [self.index[BOS], *(self.index.get(w, self.index[UNK]) for w in words), self.index[EOS]]
        return ids, unknown

    def batch(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[list[str]]]:
        """ids `(b, L)` padded with PAD, mask `(b, L)` True at real tokens, unknown words per text."""
        encoded = [self.encode(t) for t in texts]
        length = max(len(ids) for ids, _ in encoded)
        ids = torch.zeros(len(texts), length, dtype=torch.long)
        mask = torch.zeros(len(texts), length, dtype=torch.bool)
        for i, (row, _) in enumerate(encoded):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = True
        return ids, mask, [u for _, u in encoded]

    def to_json(self) -> str:
        return json.dumps({"type": "mavcli-words", "max_len": self.max_len, "vocab": self.vocab})

    @classmethod
    def from_json(cls, text: str) -> Tokenizer:
        try:
            data = json.loads(text)
            assert data["type"] == "mavcli-words"
            return cls(list(data["vocab"]), int(data["max_len"]))
        except (ValueError, KeyError, TypeError, AssertionError) as err:
            raise PackError(f"tokenizer.json is not a mavcli tokenizer ({err!r})") from None


@dataclass(frozen=True)
class TextEncoderConfig:
    vocab_size: int = 64
    max_len: int = 24
    dim: int = 128
    depth: int = 3
    heads: int = 4
    embed_dim: int = 64  # the shared text/image embedding space


class TransformerLayer(nn.Module):
    """Pre-norm self-attention + feed-forward on `(b, n, d)` tokens, with a key padding mask."""

    def __init__(self, dim: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        self.attn = Attention(dim, dim_head=dim // heads, heads=heads, rotary_ndim=1, causal=causal)
        self.ff = FeedForward(dim, 4)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(x, grid=(x.shape[1],), context_mask=mask)
        return x + self.ff(x)


class TextEncoder(nn.Module):
    """ids `(b, L)` + mask `(b, L)` -> tokens `(b, L, dim)`, pooled embedding `(b, embed_dim)`
    (unit length: the EOS token's state, projected)."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.dim)
        self.layers = nn.ModuleList(TransformerLayer(c.dim, c.heads) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim)
        self.proj = nn.Linear(c.dim, c.embed_dim, bias=False)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if ids.max() >= self.config.vocab_size:
            raise ValueError(f"token id {int(ids.max())} is outside the vocabulary of {self.config.vocab_size}")
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x, mask)
        x = self.norm(x)
        last = mask.long().sum(1) - 1  # EOS position of each row
        pooled = x[torch.arange(x.shape[0], device=x.device), last]
        return x, F.normalize(self.proj(pooled), dim=-1)

    def word_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """The context-free word embeddings `(b, L, dim)`, layer-normalised to the scale of the
        encoder's outputs. A text encoder trained contrastively on still frames learns nothing
        from motion words, and its output states for "left" and "right" come out nearly equal
        (cosine 0.99 in the shapes pack); the input embeddings still tell them apart, so a
        video decoder can attend to both."""
        return F.layer_norm(self.embed(ids), (self.config.dim,))


@dataclass(frozen=True)
class ImageEncoderConfig:
    image_size: int = 32
    channels: tuple[int, ...] = (32, 64, 128)
    embed_dim: int = 64



def with_word_tokens(encoder: TextEncoder, ids: torch.Tensor, tokens: torch.Tensor,
                     mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The keyframe decoder's context when a pack sets `decoder_word_tokens`: the encoder's
    states `(b, L, d)` followed by the word embeddings of the same ids -> `(b, 2L, d)`, and the
    mask `(b, L)` repeated -> `(b, 2L)`."""
    words = encoder.word_tokens(ids).to(tokens.dtype)
    return torch.cat([tokens, words], dim=1), torch.cat([mask, mask], dim=1)


def states_only(mask: torch.Tensor) -> torch.Tensor:
    """A `with_word_tokens` context mask `(b, 2L)` with the word embeddings masked out: the
    context a pack without `decoder_word_tokens` gives (the encoder states alone)."""
    out = mask.clone()
    out[:, mask.shape[1] // 2:] = False
    return out


class ImageEncoder(nn.Module):
    """Images `(b, 3, h, w)` in [-1, 1] -> unit-length embeddings `(b, embed_dim)`: a small
    strided CNN with global average pooling (CLIP's image tower, scaled down)."""

    def __init__(self, config: ImageEncoderConfig) -> None:
        super().__init__()
        self.config = c = config
        layers: list[nn.Module] = []
        ch = 3
        for out in c.channels:
            layers += [nn.Conv2d(ch, out, 3, stride=2, padding=1), group_norm(out), nn.SiLU(),
                       nn.Conv2d(out, out, 3, padding=1), group_norm(out), nn.SiLU()]
            ch = out
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(ch, c.embed_dim, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"ImageEncoder takes (b, 3, h, w) images, got {tuple(images.shape)}")
        h = self.body(images)
        return F.normalize(self.proj(h.mean(dim=(2, 3))), dim=-1)


def clip_loss(text_emb: torch.Tensor, image_emb: torch.Tensor, logit_scale: torch.Tensor,
              same: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP). `same` `(b, b)` marks pairs that share a caption's facts
    (several clips of one caption in a batch are all positives, not negatives)."""
    logits = logit_scale.exp().clamp(max=100) * text_emb @ image_emb.t()
    if same is None:
        same = torch.eye(len(text_emb), dtype=torch.bool, device=text_emb.device)
    target = same.float() / same.float().sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target.t()))
