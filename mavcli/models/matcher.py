"""A noised video-text matcher: how well does a (noisy) clip fit a caption?

Not a network of Make-A-Video's cascade. The paper says it cannot learn "associations between
text and phenomena that can only be inferred in videos" (section 5): its decoder sees motion
only in unlabelled video. The shapes pack met exactly that: its keyframe decoder draws motion
whose direction ignores the direction word. This network is the cascade's check on it, in the
line of GLIDE's noised CLIP (Nichol et al. 2022, section 2.3) and DALL-E's CLIP re-ranking:
a video tower that sees the noisy keyframes x_t at diffusion time t, a text tower over the
text encoder's (frozen) tokens, and their cosine similarity. The pipeline uses it to pick the
best of several keyframe samples (`PackSettings.keyframe_candidates`) and, optionally, to steer
sampling by its gradient (`PackSettings.matcher_guidance`).

Shapes: video `(b, 3, f, h, w)` in [-1, 1] (any f, h, w), t `(b,)` in [0, 1], context
`(b, m, text_dim)` with mask `(b, m)` -> unit vectors `(b, embed_dim)`; `score` -> `(b,)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mavcli.models.blocks import ContextPool
from mavcli.nn.embeddings import ScalarEmbedding
from mavcli.nn.norm import group_norm


@dataclass(frozen=True)
class MatcherConfig:
    text_dim: int = 128  # width of the text encoder's tokens
    channels: tuple[int, ...] = (32, 64, 128)  # video tower, one level per entry (x1/2 space each)
    embed_dim: int = 64
    pool_heads: int = 4  # learned queries pooling the text tokens
    time_dim: int = 128


class _Level(nn.Module):
    """Two full 3-D convolutions (motion direction needs filters that are not separable in
    space and time), the diffusion time as a scale and shift between them, then x1/2 in space
    (never in time). `(b, c_in, f, h, w)` -> `(b, c_out, f, ceil(h/2), ceil(w/2))`."""

    def __init__(self, c_in: int, c_out: int, time_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(c_in, c_out, 3, padding=1)
        self.norm1 = group_norm(c_out)
        self.film = nn.Linear(time_dim, 2 * c_out)
        self.conv2 = nn.Conv3d(c_out, c_out, 3, padding=1)
        self.norm2 = group_norm(c_out)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.norm1(self.conv1(x))
        scale, shift = rearrange(self.film(temb), "b (two c) -> two b c 1 1 1", two=2)
        h = F.silu(h * (1 + scale) + shift)
        h = F.silu(self.norm2(self.conv2(h)))
        return F.avg_pool3d(h, (1, 2, 2), ceil_mode=True)


class VideoTextMatcher(nn.Module):
    """Noised video tower + text pooling, CLIP-style (see the module docstring)."""

    def __init__(self, config: MatcherConfig) -> None:
        super().__init__()
        self.config = c = config
        self.time = ScalarEmbedding(c.time_dim, scale=1000.0)
        chans = (3, *c.channels)
        self.levels = nn.ModuleList(_Level(a, b, c.time_dim) for a, b in zip(chans[:-1], chans[1:]))
        self.video_proj = nn.Linear(c.channels[-1], c.embed_dim)
        self.text_pool = ContextPool(c.text_dim, c.embed_dim, c.pool_heads)
        self.text_pool.out.reset_parameters()  # ContextPool starts at zero for its use in the U-Net
        self.text_proj = nn.Sequential(nn.SiLU(), nn.Linear(c.embed_dim, c.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def encode_video(self, video: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """`(b, 3, f, h, w)`, t `(b,)` -> `(b, embed_dim)` unit vectors."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"the matcher takes videos (b, 3, f, h, w), got {tuple(video.shape)}")
        temb = self.time(t.to(video.dtype).expand(video.shape[0]))
        h = video
        for level in self.levels:
            h = level(h, temb)
        return F.normalize(self.video_proj(h.mean(dim=(2, 3, 4))), dim=-1)

    def encode_text(self, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens `(b, m, text_dim)`, mask `(b, m)` -> `(b, embed_dim)` unit vectors."""
        return F.normalize(self.text_proj(self.text_pool(context, mask)), dim=-1)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=100.0)

    def forward(self, video: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Both towers at once (what training calls, through DDP): video embeddings `(b, e)`,
        text embeddings `(n, e)` of n captions (any number), and the logit scale."""
        return self.encode_video(video, t), self.encode_text(context, mask), self.scale()

    def score(self, video: torch.Tensor, t: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logit of each clip fitting its own caption: `(b,)`."""
        return self.scale() * (self.encode_video(video, t) * self.encode_text(context, mask)).sum(-1)


def matcher_loss(video_emb: torch.Tensor, text_emb: torch.Tensor, negative_emb: torch.Tensor,
                 scale: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each clip over captions: its own, the other clips' (those with the
    same facts, `same` `(b, b)`, left out) and its own hard negatives, captions that differ from
    its own in one fact (`negative_emb` `(b, k, e)`). Hard negatives teach the facts that
    random batches rarely contrast, such as "left" against "right" for the same object."""
    batch = scale * video_emb @ text_emb.t()  # (b, b)
    eye = torch.eye(len(batch), dtype=torch.bool, device=batch.device)
    batch = batch.masked_fill(same & ~eye, torch.finfo(batch.dtype).min)
    hard = scale * torch.einsum("b e, b k e -> b k", video_emb, negative_emb)
    logits = torch.cat([batch, hard], dim=1)
    target = torch.arange(len(batch), device=batch.device)
    return F.cross_entropy(logits, target)


def steady_size_loss(video_emb: torch.Tensor, twin_emb: torch.Tensor, text_emb: torch.Tensor,
                     scale: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each caption over two clips: its own `video_emb` `(b, e)` and the same
    clip with the object's size changing over the frames, `twin_emb` `(b, e)` (`text_emb`
    `(b, e)`). The shapes world keeps sizes constant; captions never say so, so only such
    pairs teach the matcher, and through its guidance and ranking the keyframe decoder's
    sampling, that a clip whose object grows or shrinks fits no caption."""
    logits = scale * torch.stack([(video_emb * text_emb).sum(-1), (twin_emb * text_emb).sum(-1)], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))
