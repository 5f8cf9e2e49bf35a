"""The prior P (Make-A-Video section 3.1; DALL-E 2's diffusion prior, Ramesh et al. 2022,
section 2.1): text embedding + text tokens -> an image embedding, by diffusion.

A transformer reads the sequence [text tokens, text embedding, diffusion time, noisy image
embedding, a learned query] and predicts v for the image embedding from the query's output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mavcli.models.text import TransformerLayer
from mavcli.nn.embeddings import ScalarEmbedding

# Unit-length embeddings of width 64 have coordinates of std ~0.125; the prior diffuses them
# scaled up to std ~0.5, the scale the noise schedule is made for (like images in [-1, 1]).
EMBED_SCALE = 4.0


@dataclass(frozen=True)
class PriorConfig:
    embed_dim: int = 64  # image / text embedding width
    text_dim: int = 128  # text token width
    dim: int = 256
    depth: int = 4
    heads: int = 4


class Prior(nn.Module):
    """`forward(x, t, *, text_emb, context, context_mask, drop_cond=None) -> v`.

    x `(b, embed_dim)` noisy image embedding, t `(b,)`, text_emb `(b, embed_dim)`,
    context `(b, L, text_dim)` with mask `(b, L)`; returns `(b, embed_dim)`.
    """

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self.config = c = config
        self.token_proj = nn.Linear(c.text_dim, c.dim)
        self.text_proj = nn.Linear(c.embed_dim, c.dim)
        self.x_proj = nn.Linear(c.embed_dim, c.dim)
        self.time = ScalarEmbedding(c.dim, scale=1000.0)
        self.query = nn.Parameter(torch.randn(c.dim) * 0.02)
        self.null_text = nn.Parameter(torch.zeros(c.embed_dim))
        self.null_token = nn.Parameter(torch.zeros(c.text_dim))
        self.layers = nn.ModuleList(TransformerLayer(c.dim, c.heads) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim)
        self.out = nn.Linear(c.dim, c.embed_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, *, text_emb: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor, drop_cond: torch.Tensor | None = None) -> torch.Tensor:
        b = x.shape[0]
        if drop_cond is not None:
            keep = ~drop_cond.bool()
            text_emb = torch.where(keep[:, None], text_emb, self.null_text)
            context = torch.where(keep[:, None, None], context, self.null_token)
            only_first = torch.zeros_like(context_mask)
            only_first[:, 0] = True
            context_mask = torch.where(keep[:, None], context_mask, only_first)
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
        t = t.expand(b) if t.ndim == 0 else t
        seq = torch.cat([
            self.token_proj(context),
            self.text_proj(text_emb)[:, None],
            self.time(t)[:, None],
            self.x_proj(x)[:, None],
            self.query.expand(b, 1, -1),
        ], dim=1)
        mask = torch.cat([context_mask.bool(), torch.ones(b, 4, dtype=torch.bool, device=x.device)], dim=1)
        for layer in self.layers:
            seq = layer(seq, mask)
        return self.out(self.norm(seq[:, -1]))
