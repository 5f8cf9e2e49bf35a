"""The seed's layer API (shared/seed README) and the guarantees of the pseudo-3D layers."""

import pytest
import torch

from mavcli import Pseudo3DConv, SpatioTemporalAttention
from mavcli.nn import LearnedTemporalEMA
from mavcli.nn.embeddings import Rotary


def per_frame(layer, video, **kw):
    """Apply `layer` to each frame of `(b, c, f, h, w)` as an image and stack over f."""
    return torch.stack([layer(video[:, :, i], **kw) for i in range(video.shape[2])], dim=2)


# --- the seed README's three examples, verbatim but for the package name -----------------

def test_seed_example_video():
    conv = Pseudo3DConv(dim=256, kernel_size=3)
    attn = SpatioTemporalAttention(dim=256, dim_head=64, heads=8)
    video = torch.randn(1, 256, 8, 16, 16)  # (batch, features, frames, height, width)
    conv_out = conv(video)  # (1, 256, 8, 16, 16)
    attn_out = attn(video)  # (1, 256, 8, 16, 16)
    assert conv_out.shape == (1, 256, 8, 16, 16)
    assert attn_out.shape == (1, 256, 8, 16, 16)


def test_seed_example_images():
    conv = Pseudo3DConv(dim=256, kernel_size=3)
    attn = SpatioTemporalAttention(dim=256, dim_head=64, heads=8)
    images = torch.randn(1, 256, 16, 16)  # (batch, features, height, width)
    conv_out = conv(images)  # (1, 256, 16, 16)
    attn_out = attn(images)  # (1, 256, 16, 16)
    assert conv_out.shape == (1, 256, 16, 16)
    assert attn_out.shape == (1, 256, 16, 16)


def test_seed_example_time_off():
    conv = Pseudo3DConv(dim=256, kernel_size=3)
    attn = SpatioTemporalAttention(dim=256, dim_head=64, heads=8)
    video = torch.randn(1, 256, 8, 16, 16)
    conv_out = conv(video, convolve_across_time=False)  # (1, 256, 8, 16, 16)
    attn_out = attn(video, attend_across_time=False)  # (1, 256, 8, 16, 16)
    assert conv_out.shape == (1, 256, 8, 16, 16)
    assert attn_out.shape == (1, 256, 8, 16, 16)
    # with time off, every frame is processed exactly as an image
    torch.testing.assert_close(conv_out, per_frame(conv, video), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(attn_out, per_frame(attn, video), rtol=1e-5, atol=1e-5)


# --- identity at initialisation ------------------------------------------------------------

@pytest.mark.parametrize("time_on", [True, False])
def test_identity_at_init(time_on):
    torch.manual_seed(0)
    conv = Pseudo3DConv(dim=16, kernel_size=3)
    attn = SpatioTemporalAttention(dim=16, dim_head=8, heads=2, temporal_ema=True)
    video = torch.randn(2, 16, 5, 6, 6)
    torch.testing.assert_close(conv(video, convolve_across_time=time_on), per_frame(conv, video), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(attn(video, attend_across_time=time_on), per_frame(attn, video), rtol=1e-5, atol=1e-5)
    # and the spatial part is not trivially the identity: the test above is not vacuous
    assert (attn(video) - video).abs().mean() > 1e-2
    assert (conv(video) - video).abs().mean() > 1e-2


def test_ema_identity_at_init_and_mixes_after_training():
    torch.manual_seed(0)
    ema = LearnedTemporalEMA(8, ema_dim=4)
    video = torch.randn(1, 8, 6, 3, 3)
    torch.testing.assert_close(ema(video), video)
    image = torch.randn(1, 8, 3, 3)
    assert torch.equal(ema(image), image)
    with torch.no_grad():
        ema.gate.fill_(1.0)
    out = ema(video)
    # bidirectional: the first frame now depends on later frames
    moved = video.clone()
    moved[:, :, -1] += 1.0
    assert not torch.allclose(ema(moved)[:, :, 0], out[:, :, 0])


def test_causal_ema_and_causal_time_attention_do_not_look_ahead():
    torch.manual_seed(0)
    attn = SpatioTemporalAttention(dim=16, dim_head=8, heads=2, causal_time_attn=True, temporal_ema=True)
    with torch.no_grad():  # move the temporal parts off the identity
        torch.nn.init.normal_(attn.temporal_attn.to_out.weight, std=0.2)
        attn.temporal_ema.gate.fill_(1.0)
    video = torch.randn(1, 16, 6, 4, 4)
    changed = video.clone()
    changed[:, :, 4:] = torch.randn_like(changed[:, :, 4:])
    a, b = attn(video), attn(changed)
    torch.testing.assert_close(a[:, :, :4], b[:, :, :4], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a[:, :, 4:], b[:, :, 4:])


def test_temporal_parameters_receive_gradients_and_leave_identity():
    torch.manual_seed(0)
    conv = Pseudo3DConv(dim=8, kernel_size=3)
    attn = SpatioTemporalAttention(dim=8, dim_head=4, heads=2, temporal_ema=True)
    model = torch.nn.ModuleList([conv, attn])
    temporal = {n: p.detach().clone() for n, p in model.named_parameters() if "temporal" in n}
    assert len(temporal) >= 8  # conv weight+bias, attention projections + norms, EMA parameters
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    video = torch.randn(2, 8, 4, 5, 5)
    target = torch.roll(video, 1, dims=2)  # a target only temporal mixing can reach
    for _ in range(4):
        opt.zero_grad()
        loss = (attn(conv(video)) - target).square().mean()
        loss.backward()
        opt.step()
    for name, p in model.named_parameters():
        if name in temporal:
            assert not torch.equal(p.detach(), temporal[name]), f"{name} did not move"
    # off the identity: video output no longer equals per-frame output
    assert not torch.allclose(conv(video), per_frame(conv, video), atol=1e-4)
    assert not torch.allclose(attn(video), per_frame(attn, video), atol=1e-4)


# --- sizes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("frames", [1, 2, 3, 7])
def test_any_frame_count_and_non_square(frames):
    torch.manual_seed(0)
    conv = Pseudo3DConv(dim=8, kernel_size=3, dim_out=12)
    attn = SpatioTemporalAttention(dim=12, dim_head=4, heads=3)
    video = torch.randn(2, 8, frames, 5, 9)
    out = attn(conv(video))
    assert out.shape == (2, 12, frames, 5, 9)
    assert torch.isfinite(out).all()


def test_bad_shapes_raise_clear_errors():
    conv = Pseudo3DConv(dim=8)
    attn = SpatioTemporalAttention(dim=8, dim_head=4, heads=2)
    with pytest.raises(ValueError, match="channels"):
        conv(torch.randn(1, 7, 3, 4, 4))
    with pytest.raises(ValueError, match="3-D tensor"):
        attn(torch.randn(1, 8, 4))
    with pytest.raises(ValueError, match="empty"):
        conv(torch.randn(1, 8, 0, 4, 4))
    with pytest.raises(ValueError, match="odd"):
        Pseudo3DConv(dim=8, kernel_size=2)


def test_cross_attention_uses_context_and_mask():
    torch.manual_seed(0)
    attn = SpatioTemporalAttention(dim=8, dim_head=4, heads=2, context_dim=6)
    video = torch.randn(1, 8, 3, 4, 4)
    ctx = torch.randn(1, 5, 6)
    a = attn(video, context=ctx)
    b = attn(video, context=ctx + 1.0)
    assert not torch.allclose(a, b)
    # masked-out tokens make no difference
    mask = torch.tensor([[True, True, True, False, False]])
    ctx2 = ctx.clone()
    ctx2[:, 3:] = torch.randn(1, 2, 6)
    torch.testing.assert_close(attn(video, context=ctx, context_mask=mask), attn(video, context=ctx2, context_mask=mask))
    with pytest.raises(ValueError, match="context"):
        attn(video)


def test_rotary_is_relative_and_cached():
    rot = Rotary(8, ndim=1)
    q = torch.randn(1, 1, 1, 8).expand(1, 1, 6, 8)
    k = torch.randn(1, 1, 1, 8).expand(1, 1, 6, 8)
    qr, kr = rot(q, k, (6,))
    logits = qr @ kr.transpose(-1, -2)
    # the same content at the same offset gives the same logit anywhere in the sequence
    torch.testing.assert_close(logits[0, 0, 1, 3], logits[0, 0, 2, 4])
    assert not torch.allclose(logits[0, 0, 1, 3], logits[0, 0, 1, 4])
    first = rot.tables((6,), q.device, q.dtype)
    assert rot.tables((6,), q.device, q.dtype)[0] is first[0]
