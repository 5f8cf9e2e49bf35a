"""The layers compute their definitions (Make-A-Video section 3.2), checked against plain
re-implementations written here from those definitions.

- Pseudo3DConv: a 2-D conv on every frame, then a 1-D conv along time at every pixel
  (conv2d per frame, conv1d per pixel), forward and gradients; one process feeding two frame
  sizes (16x16, then 14x14) gets what a fresh process gets.
- SpatioTemporalAttention and Attention: LayerNorm, linear, RMS norm, interleaved rotary pairs,
  softmax attention, GEGLU, forward and gradients.
- `mav bench layers` through Typer's CliRunner: its table's values.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from typer.testing import CliRunner

from mavcli import Pseudo3DConv, SpatioTemporalAttention
from mavcli.cli.app import app
from mavcli.nn.attention import Attention


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the reference's largest value."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def grads(out: torch.Tensor, inputs: list[torch.Tensor], seed: int = 1) -> list[torch.Tensor]:
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out.dtype)
    return list(torch.autograd.grad((out * g).sum(), inputs, allow_unused=True))


# --- pseudo-3D convolution --------------------------------------------------------------------

def ref_conv(conv: Pseudo3DConv, x: torch.Tensor, time: bool = True) -> torch.Tensor:
    """Eq. 1: conv2d on each frame of `(b, c, f, h, w)`, then conv1d along f at each pixel."""
    b, _, f, h, w = x.shape
    y = torch.stack([conv.spatial_conv(x[:, :, t]) for t in range(f)], dim=2)  # (b, o, f, h, w)
    if not time or conv.temporal_conv is None:
        return y
    seq = rearrange(y, "b c f h w -> (b h w) c f")
    seq = F.conv1d(seq, conv.temporal_conv.weight, conv.temporal_conv.bias, padding=conv.temporal_conv.padding)
    return rearrange(seq, "(b h w) c f -> b c f h w", b=b, h=h, w=w)


def _perturbed_conv(dim: int, **kw) -> Pseudo3DConv:
    conv = Pseudo3DConv(dim, 3, **kw)
    with torch.no_grad():  # off the identity, so the temporal conv does real work
        conv.temporal_conv.weight.add_(0.1 * torch.randn_like(conv.temporal_conv.weight))
        conv.temporal_conv.bias.normal_(0, 0.1)
    return conv


@pytest.mark.parametrize("shape,dim_out", [((2, 8, 3, 5, 7), None), ((1, 8, 1, 4, 4), 12), ((1, 6, 4, 9, 6), 4)])
@pytest.mark.parametrize("time_on", [True, False])
def test_pseudo3d_conv_is_its_definition(shape, dim_out, time_on):
    torch.manual_seed(0)
    conv = _perturbed_conv(shape[1], dim_out=dim_out).double()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    out, ref = conv(x, time_on), ref_conv(conv, x, time_on)
    assert out.shape == ref.shape and rel_err(out, ref) < 1e-12
    params = [x, *conv.parameters()]
    for a, r in zip(grads(out, params), grads(ref, params)):
        if r is not None:
            assert a is not None and rel_err(a, r) < 1e-12
    frames = rearrange(x, "b c f h w -> (b f) c h w")  # the U-Net's layout gives the same
    y = conv.forward_frames(frames, shape[2] if time_on else None)
    torch.testing.assert_close(rearrange(y, "(b f) c h w -> b c f h w", f=shape[2]), out, rtol=0, atol=0)


def test_pseudo3d_conv_two_frame_sizes_in_one_process_equal_fresh_runs():
    """One process, two frame sizes that pad to the same shape (64 channels at 16x16, then
    14x14): each output equals the definition, as a fresh process's would."""
    torch.manual_seed(0)
    conv = _perturbed_conv(64)
    with torch.inference_mode():
        for size in (16, 14, 16):
            x = torch.randn(1, 64, 3, size, size)
            out = conv(x)
            assert rel_err(out, ref_conv(conv, x)) < 1e-5, size


def test_pseudo3d_conv_images_use_the_frames_kernels():
    torch.manual_seed(0)
    conv = _perturbed_conv(8)
    x = torch.randn(2, 8, 3, 6, 6)
    images = torch.stack([conv(x[:, :, t]) for t in range(3)], dim=2)
    torch.testing.assert_close(images, conv(x, False), rtol=0, atol=0)


# --- attention: a plain re-implementation of the layer's definition ------------------------------

def ref_rotary(x: torch.Tensor, grid: tuple[int, ...], theta: float = 10000.0) -> torch.Tensor:
    """Rotary positions on `(B, H, n, d)`: channel pairs (2i, 2i+1) rotate together; per axis of
    the grid, (d / ndim) rounded down to pairs; leftover channels unrotated."""
    d, ndim = x.shape[-1], len(grid)
    per_axis = (d // ndim) // 2 * 2
    # the frequencies are float32 numbers (a float64 copy of the layer keeps those values)
    inv = (1.0 / theta ** (torch.arange(0, per_axis, 2, dtype=torch.float32) / per_axis)).to(x.dtype)
    coords = torch.cartesian_prod(*[torch.arange(s, dtype=x.dtype) for s in grid]).reshape(-1, ndim)
    angles = torch.cat([coords[:, a : a + 1] * inv for a in range(ndim)], dim=-1)  # (n, pairs)
    cos, sin = angles.cos(), angles.sin()
    r = per_axis * ndim
    x1, x2 = x[..., 0:r:2], x[..., 1:r:2]
    out = x.clone()
    out[..., 0:r:2] = x1 * cos - x2 * sin
    out[..., 1:r:2] = x2 * cos + x1 * sin
    return out


def ref_attention(attn: Attention, x, grid=None, context=None, context_mask=None):
    """LayerNorm -> q, k, v -> RMS norm of q and k -> rotary -> softmax(q k^T / sqrt(d)) v -> out."""
    b, n, _ = x.shape
    heads, d = attn.heads, attn.dim_head
    h = F.layer_norm(x, x.shape[-1:], attn.norm.weight, attn.norm.bias, attn.norm.eps)
    if attn.is_cross:
        q = h @ attn.to_q.weight.t()
        k, v = (context @ attn.to_kv.weight.t()).chunk(2, dim=-1)
    else:
        q, k, v = (h @ attn.to_qkv.weight.t()).chunk(3, dim=-1)
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    if attn.q_norm is not None:
        q = F.rms_norm(q, (d,), attn.q_norm.weight, attn.q_norm.eps)
        k = F.rms_norm(k, (d,), attn.k_norm.weight, attn.k_norm.eps)
    if attn.rotary is not None and grid is not None:
        q, k = ref_rotary(q, grid), ref_rotary(k, grid)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    if context_mask is not None:
        scores = scores.masked_fill(~context_mask.bool()[:, None, None, :], float("-inf"))
    elif attn.causal:
        m = scores.shape[-1]
        scores = scores.masked_fill(torch.ones(n, m, dtype=torch.bool).triu(1), float("-inf"))
    out = scores.softmax(-1) @ v
    return out.transpose(1, 2).reshape(b, n, heads * d) @ attn.to_out.weight.t()


def ref_feed_forward(ff, x):
    h = F.layer_norm(x, x.shape[-1:], ff.norm.weight, ff.norm.bias, ff.norm.eps)
    a, gate = (h @ ff.proj_in.weight.t() + ff.proj_in.bias).chunk(2, dim=-1)
    return (a * F.gelu(gate)) @ ff.proj_out.weight.t() + ff.proj_out.bias


def ref_block(m: SpatioTemporalAttention, x, attend=True, context=None, context_mask=None):
    video = x.ndim == 5
    if video:
        b, c, f, hh, ww = x.shape
        tok = rearrange(x, "b c f h w -> (b f) (h w) c")
    else:
        (b, c, hh, ww), f = x.shape, 1
        tok = rearrange(x, "b c h w -> b (h w) c")
    tok = tok + ref_attention(m.spatial_attn, tok, (hh, ww))
    if m.cross_attn is not None:
        ctx = repeat(context, "b m d -> (b f) m d", f=f)
        cmask = None if context_mask is None else repeat(context_mask, "b m -> (b f) m", f=f)
        tok = tok + ref_attention(m.cross_attn, tok, None, ctx, cmask)
    if video and attend and m.temporal_attn is not None:
        t = rearrange(tok, "(b f) n c -> (b n) f c", f=f)
        t = t + ref_attention(m.temporal_attn, t, (f,))
        if m.temporal_ema is not None:
            t = m.temporal_ema.forward_tokens(t)
        tok = rearrange(t, "(b n) f c -> (b f) n c", b=b)
    if m.ff is not None:
        tok = tok + ref_feed_forward(m.ff, tok)
    if video:
        return rearrange(tok, "(b f) (h w) c -> b c f h w", f=f, h=hh)
    return rearrange(tok, "b (h w) c -> b c h w", h=hh)


def _randomised(m: torch.nn.Module) -> torch.nn.Module:
    """Every parameter off its initial value (gains off 1, zero-init projections off 0)."""
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0, p.shape[-1] ** -0.5)
    return m


BLOCKS = [
    dict(dim=32, dim_head=8, heads=4),
    dict(dim=24, dim_head=6, heads=4, causal_time_attn=True),
    dict(dim=16, dim_head=7, heads=3),  # odd head width: an unrotated channel
    dict(dim=16, dim_head=8, heads=2, qk_norm=False),
    dict(dim=16, dim_head=8, heads=2, rotary=False),
    dict(dim=16, dim_head=8, heads=2, temporal_ema=True, context_dim=6),
]
SHAPES = [(2, 3, 5, 7), (1, 1, 4, 4), (2, 4, 1, 6), (3, 2, 3, 3)]  # (b, f, h, w)


@pytest.mark.parametrize("cfg", BLOCKS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_spatiotemporal_attention_matches_reference(cfg, dtype, tol):
    torch.manual_seed(0)
    m = _randomised(SpatioTemporalAttention(**cfg)).to(dtype)
    params = list(m.parameters())
    for b, f, h, w in SHAPES:
        kw = {}
        if cfg.get("context_dim"):
            kw = dict(
                context=torch.randn(b, 4, cfg["context_dim"], dtype=dtype),
                context_mask=torch.tensor([[True, False, True, True]] * b),
            )
        video, image = (b, cfg["dim"], f, h, w), (b, cfg["dim"], h, w)
        for x_shape, attend in ((video, True), (video, False), (image, True)):
            x = torch.randn(x_shape, dtype=dtype, requires_grad=True)
            out, ref = m(x, attend, **kw), ref_block(m, x, attend, **kw)
            assert out.shape == ref.shape
            assert rel_err(out, ref) < tol, (x_shape, attend)
            for p, a, r in zip([x, *params], grads(out, [x, *params]), grads(ref, [x, *params])):
                if r is None or r.abs().max() < 1e-12:  # a part this input does not use
                    continue
                assert a is not None and rel_err(a, r) < tol, (x_shape, attend, p.shape)


def test_forward_frames_matches_forward():
    torch.manual_seed(0)
    m = _randomised(SpatioTemporalAttention(16, dim_head=8, heads=2))
    x = torch.randn(2, 16, 3, 4, 5)
    y = m.forward_frames(rearrange(x, "b c f h w -> (b f) c h w"), 3)
    torch.testing.assert_close(rearrange(y, "(b f) c h w -> b c f h w", f=3), m(x), rtol=0, atol=0)
    frames_as_images = m.forward_frames(rearrange(x, "b c f h w -> (b f) c h w"), None)
    torch.testing.assert_close(rearrange(frames_as_images, "(b f) c h w -> b c f h w", f=3), m(x, False))


@pytest.mark.parametrize("causal", [False, True])
def test_attention_token_api_matches_reference(causal):
    """`Attention(x, grid=..., context_mask=...)` as the text encoder uses it."""
    torch.manual_seed(0)
    attn = _randomised(Attention(16, dim_head=4, heads=4, rotary_ndim=1, causal=causal)).double()
    x = torch.randn(3, 6, 16, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2, [True] * 5 + [False]])
    for kw in (dict(grid=(6,)), dict(grid=(6,), context_mask=mask), dict()):
        out, ref = attn(x, **kw), ref_attention(attn, x, kw.get("grid"), None, kw.get("context_mask"))
        assert rel_err(out, ref) < 1e-10
        params = [x, *attn.parameters()]
        for a, r in zip(grads(out, params), grads(ref, params)):
            assert rel_err(a, r) < 1e-10


def test_attention_under_autocast_runs_and_stays_close():
    torch.manual_seed(0)
    m = _randomised(SpatioTemporalAttention(32, dim_head=8, heads=4))
    x = torch.randn(1, 32, 3, 4, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    out.float().square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert rel_err(out.float(), ref_block(m, x.detach())) < 5e-2


# --- mav bench layers -------------------------------------------------------------------------

runner = CliRunner()


def test_bench_layers_counts_the_nominal_flops():
    """The conv row's GFLOP is the direct convolution's count: 2 multiply-adds per weight per
    output element, 9 taps in space and 3 in time; the speed-up is anchor / mavcli."""
    from mavcli.bench.layers import run_layer_bench

    b, c, f, h, w = shape = (1, 32, 2, 4, 4)
    result = run_layer_bench(shape=shape, dim_head=16, heads=2, rounds=1)
    rows = {(r.layer, r.mode): r for r in result.rows}
    assert set(rows) == {(layer, mode) for layer in ("Pseudo3DConv", "SpatioTemporalAttention")
                         for mode in ("forward", "forward+backward")}
    conv = rows["Pseudo3DConv", "forward"]
    assert conv.gflop == pytest.approx(2 * b * f * h * w * c * c * (9 + 3) / 1e9, rel=1e-9)
    assert rows["Pseudo3DConv", "forward+backward"].gflop == pytest.approx(3 * conv.gflop, rel=1e-9)
    for r in result.rows:
        assert r.mavcli_ms > 0 and r.gflops == pytest.approx(r.gflop / (r.mavcli_ms / 1e3))
        assert r.speedup is None if r.anchor_ms is None else r.speedup == pytest.approx(r.anchor_ms / r.mavcli_ms)
    assert result.shape == shape and result.threads == torch.get_num_threads() and result.matmul_gflops > 0


def test_bench_layers_table_shows_the_measured_values(monkeypatch):
    """The CLI prints each row's figures as measured (fixed here), with torch's version."""
    import mavcli.bench.layers as layers

    def fake_bench(**kw):
        rows = [layers.LayerRow("Pseudo3DConv", "forward", 2.0, 3.0, 0.004),
                layers.LayerRow("SpatioTemporalAttention", "forward+backward", 10.0, 25.0, 0.05, 8.0)]
        return layers.LayerBench(rows, 123.0, None, "cpu", torch.float32, kw["shape"], 2)

    monkeypatch.setattr(layers, "run_layer_bench", fake_bench)
    r = runner.invoke(app, ["bench", "layers", "--shape", "1,32,2,4,4", "--rounds", "1"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    conv = next(line for line in lines if line.strip().startswith("Pseudo3DConv")).split()
    assert conv[1:] == ["forward", "2.00", "3.00", "1.50x", "2"]  # GFLOP/s: 0.004 GFLOP in 2 ms
    attn = next(line for line in lines if line.strip().startswith("SpatioTemporalAttention")).split()
    assert attn[1:] == ["forward+backward", "10.00", "25.00", "2.50x", "5", "8.00"]
    assert "matmul rate: 123 GFLOP/s" in r.stdout
    assert f"torch {torch.__version__}" in r.stdout


@pytest.mark.parametrize("shape", [(1, 32, 3, 4, 6), (2, 64, 2, 4, 4)])
def test_attention_matmuls_do_exactly_the_blocks_nominal_work(shape):
    """The floor that `mav bench layers` times: the attention block's matrix products alone. Its
    FLOPs must equal the block's nominal FLOPs, forward and forward+backward, or it is not the
    block's floor."""
    from torch.utils.flop_counter import FlopCounterMode

    from mavcli.bench.layers import _nominal_gflop, attention_matmuls

    dim_head, heads = 16, 4
    block = SpatioTemporalAttention(dim=shape[1], dim_head=dim_head, heads=heads)
    x = torch.randn(shape)
    xg = x.clone().requires_grad_(True)

    def block_forward():
        with torch.inference_mode():
            block(x)

    def block_forward_backward():
        block(xg).square().mean().backward()

    for ours, block_fn in zip(attention_matmuls(shape, dim_head, heads), (block_forward, block_forward_backward)):
        with FlopCounterMode(display=False) as counter:
            ours()
        assert counter.get_total_flops() / 1e9 == pytest.approx(_nominal_gflop(block_fn), rel=1e-9)


def test_bench_layers_without_the_anchor_says_how_to_install(monkeypatch):
    import mavcli.bench.layers as layers

    monkeypatch.setattr(layers, "_anchor_layers", lambda *a: (None, "No module named 'make_a_video_pytorch'"))
    r = runner.invoke(app, ["bench", "layers", "--shape", "1,32,1,4,4", "--rounds", "1"])
    assert r.exit_code == 0, r.output
    assert "pip install --no-deps make-a-video-pytorch==0.4.0" in r.stdout
    assert "not installed" in r.stderr
    assert "n/a" in r.stdout


def test_bench_layers_bad_options_exit_2():
    r = runner.invoke(app, ["bench", "layers", "--shape", "1,2,3"])
    assert r.exit_code == 2 and "B,C,F,H,W" in r.stderr
    if not torch.cuda.is_available():
        r = runner.invoke(app, ["bench", "layers", "--device", "cuda"])
        assert r.exit_code == 2 and "CUDA" in r.stderr
