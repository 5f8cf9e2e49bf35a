"""SpaceTimeUnet: shapes, conditioning, 2-D -> 3-D inflation, safetensors round trip, errors."""

import pytest
import torch

from mavcli.errors import PackError
from mavcli.models.unet import SpaceTimeUnet, UnetConfig, inflate_unet
from mavcli.weights.safetensors_io import load_network, load_state_strict, save_network
from conftest import randomise

TINY = dict(dim=8, dim_mults=(1, 2), attn_levels=(False, True), dim_head=8, heads=2, blocks_per_level=1)


def test_video_and_image_shapes_any_frames():
    torch.manual_seed(0)
    net = randomise(SpaceTimeUnet(UnetConfig(**TINY)))
    t = torch.rand(2)
    for f in (1, 3, 6):
        out = net(torch.randn(2, 3, f, 8, 12), t)
        assert out.shape == (2, 3, f, 8, 12)
        assert torch.isfinite(out).all()
    assert net(torch.randn(2, 3, 8, 12), t).shape == (2, 3, 8, 12)


def test_inflated_unet_equals_image_unet_per_frame():
    torch.manual_seed(0)
    cfg = UnetConfig(**TINY, temporal=False, cond_dim=6, context_dim=10)
    image = randomise(SpaceTimeUnet(cfg))
    video = inflate_unet(image, fps_cond=True, temporal_ema=True)
    # spatial weights copied exactly
    vstate = video.state_dict()
    for k, v in image.state_dict().items():
        assert torch.equal(vstate[k], v), k
    assert any("temporal" in k for k in vstate if k not in image.state_dict())
    x, t = torch.randn(2, 3, 5, 8, 8), torch.rand(2)
    cond, ctx = torch.randn(2, 6), torch.randn(2, 4, 10)
    out = video(x, t, cond=cond, context=ctx, fps=torch.tensor([4.0, 24.0]))
    ref = torch.stack([image(x[:, :, i], t, cond=cond, context=ctx) for i in range(5)], dim=2)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert out.abs().mean() > 1e-2  # not a vacuous comparison of zeros


def test_time_off_equals_per_frame_and_time_on_mixes_after_training():
    torch.manual_seed(0)
    net = randomise(SpaceTimeUnet(UnetConfig(**TINY)))  # temporal layers moved off identity
    x, t = torch.randn(1, 3, 4, 8, 8), torch.rand(1)
    off = net(x, t, enable_time=False)
    ref = torch.stack([net(x[:, :, i], t) for i in range(4)], dim=2)
    torch.testing.assert_close(off, ref, rtol=1e-4, atol=1e-5)
    on = net(x, t)
    assert not torch.allclose(on, off, atol=1e-4)


def test_conditioning_changes_output_and_null_drop():
    torch.manual_seed(0)
    cfg = UnetConfig(**TINY, cond_dim=6, context_dim=10, fps_cond=True, skip_cond=True, extra_in_channels=4)
    net = randomise(SpaceTimeUnet(cfg))
    x, t = torch.randn(2, 3, 3, 8, 8), torch.rand(2)
    kw = dict(cond=torch.randn(2, 6), context=torch.randn(2, 5, 10), fps=8.0, frame_skip=4.0, extra=torch.randn(2, 4, 3, 8, 8))
    base = net(x, t, **kw)
    for key, new in [("cond", torch.randn(2, 6)), ("context", torch.randn(2, 5, 10)), ("fps", 24.0),
                     ("frame_skip", 1.0), ("extra", torch.randn(2, 4, 3, 8, 8))]:
        assert not torch.allclose(net(x, t, **{**kw, key: new}), base, atol=1e-5), key
    # dropping conditioning: output no longer depends on cond/context, only for the dropped item
    drop = torch.tensor([True, False])
    a = net(x, t, **kw, drop_cond=drop)
    b = net(x, t, **{**kw, "cond": torch.randn(2, 6), "context": torch.randn(2, 5, 10)}, drop_cond=drop)
    torch.testing.assert_close(a[0], b[0])
    assert not torch.allclose(a[1], b[1], atol=1e-5)


def test_context_pool_starts_as_a_no_op_then_carries_unmasked_tokens_without_cross_attention():
    torch.manual_seed(0)
    base_cfg = dict(TINY, attn_levels=(False, False), mid_attn=False, cond_dim=6, context_dim=10)
    old = randomise(SpaceTimeUnet(UnetConfig(**base_cfg)))
    new = SpaceTimeUnet(UnetConfig(**base_cfg, context_pool_heads=2))
    with pytest.raises(PackError, match="context_pool"):  # a missing module is an error by default
        load_state_strict(new, old.state_dict(), "test")
    load_state_strict(new, old.state_dict(), "test", fresh=("context_pool.",))  # added module keeps its init
    x, t, cond = torch.randn(2, 3, 3, 8, 8), torch.rand(2), torch.randn(2, 6)
    ctx, mask = torch.randn(2, 5, 10), torch.tensor([[True] * 5, [True, True, True, False, False]])
    torch.testing.assert_close(new(x, t, cond=cond, context=ctx, context_mask=mask), old(x, t, cond=cond, context=ctx, context_mask=mask))
    # with no attention level the text reaches the network through the pool alone
    assert torch.equal(old(x, t, cond=cond, context=ctx), old(x, t, cond=cond, context=torch.randn(2, 5, 10)))
    randomise(new.context_pool, std=0.2)
    base = new(x, t, cond=cond, context=ctx, context_mask=mask)
    other = ctx.clone()
    other[:, 1] = torch.randn(2, 10)  # a visible token of both items changes
    assert (new(x, t, cond=cond, context=other, context_mask=mask) - base).abs().flatten(1).amax(1).min() > 1e-4
    masked = ctx.clone()
    masked[1, 3:] = torch.randn(2, 10)  # tokens the mask hides change nothing
    torch.testing.assert_close(new(x, t, cond=cond, context=masked, context_mask=mask), base)


def test_frame_position_starts_as_a_no_op_then_tells_frames_apart_by_their_place_in_the_clip():
    torch.manual_seed(0)
    image = randomise(SpaceTimeUnet(UnetConfig(**TINY, temporal=False, cond_dim=6)))
    video = inflate_unet(image, frame_pos_cond=True)
    t, cond = torch.rand(1), torch.randn(1, 6)
    frame = torch.randn(1, 3, 8, 8)
    def clip(f):  # a still clip: with identity temporal layers only the frame position can differ
        return video(frame[:, :, None].expand(-1, -1, f, -1, -1).contiguous(), t, cond=cond)
    per_frame_image = image(frame, t, cond=cond)
    torch.testing.assert_close(clip(3)[:, :, 1], per_frame_image)  # zero-initialised: no effect yet
    randomise(video.temporal_frame_pos, std=0.2)
    three, five = clip(3), clip(5)
    assert (three[:, :, 0] - three[:, :, 2]).abs().max() > 1e-3  # first and last frame now differ
    # the position is the fraction of the clip elapsed, whatever the frame count
    for a, b in ((0, 0), (1, 2), (2, 4)):
        torch.testing.assert_close(three[:, :, a], five[:, :, b])
    # images and time-off videos have no frame position
    torch.testing.assert_close(video(frame, t, cond=cond), per_frame_image)
    off = video(frame[:, :, None].expand(-1, -1, 3, -1, -1).contiguous(), t, cond=cond, enable_time=False)
    torch.testing.assert_close(off[:, :, 2], per_frame_image)
    with pytest.raises(ValueError, match="frame-position"):
        UnetConfig(**TINY, temporal=False, frame_pos_cond=True)


def test_safetensors_round_trip_bit_identical(tmp_path):
    torch.manual_seed(0)
    net = randomise(SpaceTimeUnet(UnetConfig(**TINY, cond_dim=6, temporal_ema=True))).eval()
    path = save_network(tmp_path / "unet.safetensors", net)
    again = load_network(path, SpaceTimeUnet, UnetConfig)
    assert again.config == net.config
    x, t, cond = torch.randn(1, 3, 3, 8, 8), torch.rand(1), torch.randn(1, 6)
    with torch.no_grad():
        assert torch.equal(net(x, t, cond=cond), again(x, t, cond=cond))
    # float16 on disk: values equal the float16-rounded weights
    half = load_network(save_network(tmp_path / "h.safetensors", net, dtype=torch.float16), SpaceTimeUnet, UnetConfig)
    w = dict(net.named_parameters())["init_conv.spatial_conv.weight"]
    assert torch.equal(dict(half.named_parameters())["init_conv.spatial_conv.weight"], w.half().float())


def test_strict_load_lists_keys(tmp_path):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    net = SpaceTimeUnet(UnetConfig(**TINY))
    path = save_network(tmp_path / "u.safetensors", net)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors["surprise.weight"] = tensors.pop("init_conv.spatial_conv.weight")
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(PackError, match=r"missing keys \['init_conv.spatial_conv.weight'\].*unexpected keys \['surprise.weight'\]"):
        load_network(path, SpaceTimeUnet, UnetConfig)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(PackError, match="not a valid safetensors"):
        load_network(tmp_path / "junk.safetensors", SpaceTimeUnet, UnetConfig)


def test_clear_errors():
    net = SpaceTimeUnet(UnetConfig(**TINY, cond_dim=6))
    t = torch.rand(1)
    with pytest.raises(ValueError, match="multiples of 2"):
        net(torch.randn(1, 3, 2, 7, 8), t, cond=torch.randn(1, 6))
    with pytest.raises(ValueError, match="input channels"):
        net(torch.randn(1, 4, 2, 8, 8), t, cond=torch.randn(1, 6))
    with pytest.raises(ValueError, match="cond="):
        net(torch.randn(1, 3, 2, 8, 8), t)
    with pytest.raises(ValueError, match="one per level"):
        UnetConfig(dim_mults=(1, 2), attn_levels=(True,))


def test_a_config_with_overrides_applies_them():
    from mavcli.models.unet import UnetConfig

    base = UnetConfig(dim=8, dim_mults=(1, 2), attn_levels=(False, True), dim_head=8, heads=2, blocks_per_level=1)
    net = SpaceTimeUnet(base, dim=16)
    assert net.config.dim == 16 and net.config.heads == 2
    assert SpaceTimeUnet(dim=16, dim_mults=(1, 2), attn_levels=(False, True), dim_head=8, heads=2,
                         blocks_per_level=1).config == net.config
    with pytest.raises(TypeError, match="UnetConfig"):
        SpaceTimeUnet(base, width=3)
    with pytest.raises(TypeError, match="takes a UnetConfig"):
        SpaceTimeUnet({"dim": 8})
