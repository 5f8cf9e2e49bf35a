"""Learned exponential moving average across time (Mega, Ma et al. 2022, "Moving Average
Equipped Gated Attention", section 2): the seed's TODO "learned EMA across time".

Each channel c keeps n damped EMAs of its (expanded) input,

    h_t = alpha * (beta * x_t) + (1 - alpha * delta) * h_{t-1},    y_t = sum_n eta * h_t,

which unrolls into a causal convolution with the kernel
K[c, t] = sum_n eta * beta * alpha * (1 - alpha * delta)^t. With f frames the whole thing is
one `(f, f)` Toeplitz matrix per channel (f is small for video), so it runs as a batched
matmul. `bidirectional=True` adds a second EMA running backwards in time. The output enters
through a zero-initialised gate, so the layer is the identity at initialisation.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from mavcli.nn.shapes import check_input


class LearnedTemporalEMA(nn.Module):
    """Damped multi-dimensional EMA along frames; identity at init.

    Shapes: `(b, c, f, h, w) -> (b, c, f, h, w)`; images `(b, c, h, w)` pass through unchanged.
    """

    def __init__(self, dim: int, ema_dim: int = 8, *, bidirectional: bool = True) -> None:
        super().__init__()
        self.dim, self.ema_dim = dim, ema_dim
        directions = 2 if bidirectional else 1
        self.bidirectional = bidirectional
        # logits of alpha (decay weight) and delta (damping), expansion beta and projection eta
        self.alpha_logit = nn.Parameter(torch.randn(directions, dim, ema_dim) * 0.2)
        self.delta_logit = nn.Parameter(torch.randn(directions, dim, ema_dim) * 0.2)
        self.beta = nn.Parameter(1.0 + torch.randn(directions, dim, ema_dim) * 0.02)
        self.eta = nn.Parameter(torch.randn(directions, dim, ema_dim) / ema_dim**0.5)
        self.gate = nn.Parameter(torch.zeros(dim))  # zero: identity at initialisation

    def kernel(self, frames: int) -> torch.Tensor:
        """The mixing matrix `(c, f, f)`: entry [c, t, s] weighs frame s in output frame t."""
        alpha = self.alpha_logit.sigmoid()
        decay = 1.0 - alpha * self.delta_logit.sigmoid()  # (dir, c, n), in (0, 1)
        t = torch.arange(frames, device=alpha.device, dtype=alpha.dtype)
        powers = decay.unsqueeze(-1) ** t  # (dir, c, n, f)
        k = torch.einsum("dcn,dcnf->dcf", self.eta * self.beta * alpha, powers)  # (dir, c, f)
        lag = t[:, None] - t[None, :]  # (t, s): t - s
        idx = lag.abs().long()
        fwd = torch.where(lag >= 0, k[0][:, idx], torch.zeros((), dtype=k.dtype, device=k.device))
        if not self.bidirectional:
            return fwd
        bwd = torch.where(lag < 0, k[1][:, idx], torch.zeros((), dtype=k.dtype, device=k.device))
        return fwd + bwd

    def forward(self, x: torch.Tensor, *, enable_time: bool = True) -> torch.Tensor:
        if not check_input(x, self.dim, "LearnedTemporalEMA") or not enable_time:
            return x
        h, w = x.shape[-2:]
        tokens = self.forward_tokens(rearrange(x, "b c f h w -> (b h w) f c"))
        return rearrange(tokens, "(b h w) f c -> b c f h w", h=h, w=w)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: `(n, f, c)` sequences along time -> same shape, `x + gate * EMA(x)`."""
        mix = self.kernel(x.shape[1]).to(x.dtype)  # (c, t, s)
        ema = torch.einsum("nsc,cts->ntc", x, mix)
        return x + self.gate.to(x.dtype) * ema
