"""The layers' fast paths compute the same function as the straightforward computation.

- Pseudo3DConv's Winograd F(4x4, 3x3) convolution (mavcli/nn/winograd.py) against F.conv2d:
  forward and every gradient, odd and non-square sizes, one frame, batch > 1; and the
  fallback to F.conv2d wherever it should be taken.
- SpatioTemporalAttention's planned layout, fused q/k norm + rotary and GEGLU against a plain
  re-implementation written here from the layer's definition (LayerNorm, linear, RMS norm,
  interleaved rotary pairs, softmax attention, GEGLU), forward and gradients.
- `mav bench layers` through Typer's CliRunner.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from typer.testing import CliRunner

from mavcli import Pseudo3DConv, SpatioTemporalAttention
from mavcli.cli.app import app
from mavcli.nn import winograd
from mavcli.nn.attention import Attention


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the reference's largest value."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def grads(out: torch.Tensor, inputs: list[torch.Tensor], seed: int = 1) -> list[torch.Tensor]:
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out.dtype)
    return list(torch.autograd.grad((out * g).sum(), inputs, allow_unused=True))


# --- Winograd convolution ---------------------------------------------------------------------

@pytest.fixture(autouse=True)
def small_channels_take_the_fast_path(monkeypatch, request):
    """Test the algorithm at small, quick sizes: lower the channel threshold to 32 (the
    threshold itself is tested at its real value in test_winograd_taken_and_fallbacks)."""
    if "fallbacks" not in request.node.name:
        monkeypatch.setattr(winograd, "MIN_CHANNELS", 32)


@pytest.mark.parametrize(
    "n,c,k,h,w",
    [(2, 5, 7, 8, 8), (3, 4, 6, 5, 9), (1, 3, 2, 1, 1), (2, 6, 4, 7, 3), (1, 2, 3, 4, 13)],
)
@pytest.mark.parametrize("channels_last_out", [False, True])
def test_winograd_conv_equals_conv2d_float64(n, c, k, h, w, channels_last_out):
    torch.manual_seed(0)
    x = torch.randn(n, c, h, w, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(k, c, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(k, dtype=torch.float64, requires_grad=True)
    ref = F.conv2d(x, weight, bias, padding=1)
    out = winograd.conv3x3(x, weight, bias, channels_last_out=channels_last_out)
    if channels_last_out:
        assert out.shape == (n, h, w, k) and out.is_contiguous()
        out = out.permute(0, 3, 1, 2)
    else:
        assert out.shape == (n, k, h, w) and out.is_contiguous()
    assert rel_err(out, ref) < 1e-12
    for a, b in zip(grads(out, [x, weight, bias]), grads(ref, [x, weight, bias])):
        assert rel_err(a, b) < 1e-12


def test_winograd_conv_gradcheck_without_bias():
    torch.manual_seed(0)
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: winograd.conv3x3(a, b, None), (x, weight), fast_mode=True)


def _perturbed_conv(dim: int, **kw) -> Pseudo3DConv:
    conv = Pseudo3DConv(dim, 3, **kw)
    if conv.temporal_conv is not None:  # move it off the Dirac identity
        with torch.no_grad():
            conv.temporal_conv.weight.add_(torch.randn_like(conv.temporal_conv.weight) * 0.05)
            conv.temporal_conv.bias.normal_(0, 0.1)
    return conv


@pytest.mark.parametrize(
    "shape,dim_out,time_on",
    [
        ((1, 64, 8, 16, 16), 64, True),  # the seed's layout, scaled down
        ((2, 32, 3, 9, 13), 40, True),  # batch > 1, odd, non-square
        ((2, 32, 1, 5, 7), 32, True),  # one frame
        ((1, 48, 4, 1, 6), 32, True),  # one row
        ((2, 32, 3, 6, 6), 32, False),  # time off
        ((3, 32, 7, 11), 36, True),  # images
    ],
)
def test_pseudo3d_conv_fast_path_matches_reference_float32(shape, dim_out, time_on):
    """Winograd in float32 against the float64 direct computation, as close as F.conv2d in
    float32 is to within a small factor (the transforms' rounding)."""
    torch.manual_seed(0)
    conv = _perturbed_conv(shape[1], dim_out=dim_out)
    x = torch.randn(shape, requires_grad=True)
    assert winograd.use_winograd(x, conv.spatial_conv)
    out = conv(x, time_on)

    conv64 = Pseudo3DConv(shape[1], 3, dim_out=dim_out).double()
    conv64.load_state_dict(conv.state_dict())
    x64 = x.detach().double().requires_grad_(True)
    ref = conv64(x64, time_on)  # float64: F.conv2d, never Winograd
    assert out.shape == ref.shape
    assert rel_err(out, ref) < 5e-5
    for a, b in zip(grads(out, [x, *conv.parameters()]), grads(ref, [x64, *conv64.parameters()])):
        assert (a is None) == (b is None)  # time off: no gradient reaches the temporal conv
        assert a is None or rel_err(a, b) < 5e-5

    with winograd.fast_paths(False):  # and the float32 reference path agrees too
        assert rel_err(conv(x, time_on), ref) < 1e-6


def test_pseudo3d_conv_video_equals_frames_as_images_with_the_fast_path():
    """Identity at init and time-off still hold exactly: images take the same kernels."""
    torch.manual_seed(0)
    conv = Pseudo3DConv(32, 3)
    video = torch.randn(2, 32, 5, 8, 10)
    frames = torch.stack([conv(video[:, :, i]) for i in range(5)], dim=2)
    torch.testing.assert_close(conv(video), frames, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(conv(video, convolve_across_time=False), frames, rtol=1e-6, atol=1e-6)


def test_winograd_scratch_buffers_are_safe_across_shapes_and_modes():
    """Scratch reuse between calls of different sizes, and between inference mode and
    autograd, never leaks values from one call into another."""
    torch.manual_seed(0)
    conv = _perturbed_conv(32)
    xs = [torch.randn(1, 32, 3, 8, 8), torch.randn(2, 32, 2, 13, 5), torch.randn(1, 32, 3, 8, 8)]
    with winograd.fast_paths(False):
        refs = [conv(x) for x in xs]
    with torch.inference_mode():
        for x, ref in zip(xs, refs):
            assert rel_err(conv(x), ref) < 5e-5
    for x, ref in zip(xs, refs):
        xg = x.clone().requires_grad_(True)
        out = conv(xg)
        assert rel_err(out, ref) < 5e-5
        out.square().mean().backward()
        assert torch.isfinite(xg.grad).all()
    winograd.clear_scratch()
    assert rel_err(conv(xs[1]), refs[1]) < 5e-5


def test_inference_kernel_cache_follows_weight_updates():
    """Inference reuses the transformed kernels until the weights change in place, are loaded,
    or are replaced."""
    torch.manual_seed(0)
    conv = _perturbed_conv(32)
    x = torch.randn(1, 32, 2, 8, 8)

    def check():
        with torch.inference_mode():
            out = conv(x)
        with winograd.fast_paths(False), torch.no_grad():
            assert rel_err(out, conv(x)) < 5e-5

    check()
    with torch.no_grad():
        conv.spatial_conv.weight.mul_(-2.0)  # an optimizer-style in-place step
    check()
    other = _perturbed_conv(32)
    conv.load_state_dict(other.state_dict())
    check()
    conv.spatial_conv.weight = torch.nn.Parameter(torch.randn_like(conv.spatial_conv.weight))
    check()
    opt = torch.optim.SGD(conv.parameters(), lr=0.5)
    conv(x).square().mean().backward()
    opt.step()
    check()

    with torch.inference_mode():  # weights made in inference mode have no version counter
        made = _perturbed_conv(32)
        with winograd.fast_paths(False):
            ref = made(x)
        assert rel_err(made(x), ref) < 5e-5


def test_winograd_taken_and_fallbacks(monkeypatch):
    calls = []
    real = winograd.conv3x3

    def spy(*args, **kw):
        calls.append(args[0].shape)
        return real(*args, **kw)

    monkeypatch.setattr(winograd, "conv3x3", spy)
    c = winograd.MIN_CHANNELS
    video = lambda ch: torch.randn(1, ch, 2, 6, 6)  # noqa: E731

    Pseudo3DConv(c, 3)(video(c))
    Pseudo3DConv(c, 3)(torch.randn(1, c, 6, 6))
    assert len(calls) == 2  # taken: CPU, float32, 3x3, enough channels, videos and images

    calls.clear()
    Pseudo3DConv(c // 2, 3)(video(c // 2))  # too few channels
    Pseudo3DConv(c, 3, dim_out=8)(video(c))  # too few output channels
    Pseudo3DConv(c, 5)(video(c))  # another kernel
    Pseudo3DConv(c, 1, temporal_kernel_size=3)(video(c))  # pointwise
    Pseudo3DConv(c, 3).double()(video(c).double())  # float64
    Pseudo3DConv(c, 3).bfloat16()(video(c).bfloat16())  # bfloat16
    with winograd.fast_paths(False):
        Pseudo3DConv(c, 3)(video(c))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        Pseudo3DConv(c, 3)(video(c))
    assert calls == []

    conv = torch.nn.Conv2d(c, c, 3, padding=1)
    x = torch.empty(1, c, 4, 4)
    assert winograd.use_winograd(x, conv)
    assert not winograd.use_winograd(torch.empty(1, c, 4, 4, device="meta"), conv)  # not CPU (e.g. CUDA)
    assert not winograd.use_winograd(x, torch.nn.Conv2d(c, c, 3, padding=1, stride=2))
    assert not winograd.use_winograd(x, torch.nn.Conv2d(c, c, 3, padding=2, dilation=2))
    assert not winograd.use_winograd(x, torch.nn.Conv2d(c, c, 3, padding=1, groups=2))


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


@pytest.mark.parametrize("causal", [False, True])
def test_inference_mode_matches_reference(causal):
    """Without autograd the temporal attention takes the two-matmul path for short sequences."""
    torch.manual_seed(0)
    m = _randomised(SpatioTemporalAttention(16, dim_head=8, heads=2, causal_time_attn=causal)).double()
    for shape in ((2, 16, 5, 3, 4), (1, 16, 1, 2, 2), (1, 16, 20, 2, 3)):  # 20 frames: the fused kernel
        x = torch.randn(shape, dtype=torch.float64)
        with torch.inference_mode():
            out = m(x)
        assert rel_err(out, ref_block(m, x)) < 1e-10


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


def test_complex_phasor_rotation_is_the_interleaved_rotary():
    """The attention rotates channel pairs as complex numbers; that is Rotary's rotation."""
    from mavcli.nn.embeddings import Rotary

    for d, grid in ((8, (3, 5)), (6, (4,)), (12, (2, 3)), (6, (2, 2))):  # (6, 2-D): 2 unrotated channels
        rot = Rotary(d, len(grid))
        q = torch.randn(2, 3, math.prod(grid), d)
        qr, _ = rot(q, q, grid)
        z = torch.view_as_complex(q.reshape(2, 3, -1, d // 2, 2))
        y = torch.view_as_real(z * rot.phasor(grid, q.device)).reshape(q.shape)
        torch.testing.assert_close(y, qr)
        torch.testing.assert_close(qr, ref_rotary(q, grid))


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


def test_bench_layers_prints_the_table():
    r = runner.invoke(app, ["bench", "layers", "--shape", "1,32,2,4,4", "--rounds", "1"])  # seconds
    assert r.exit_code == 0, r.output
    for text in ("Pseudo3DConv", "SpatioTemporalAttention", "forward+backward", "speed-up", "GFLOP/s", "matmul rate",
                 "matmuls", "alone ms"):
        assert text in r.stdout


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
