"""The whole cascade with a tiny random pack: prompt -> frames, and each stage on its own."""

import json

import numpy as np
import pytest
import torch
from einops import rearrange
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mavcli import MakeAVideoPipeline
from mavcli.diffusion import guided, sample
from mavcli.errors import PackError, UserInputError
from mavcli.weights.pack import load_pack, save_pack

PROMPT = "a red circle moving left on a black background"


@pytest.fixture(scope="module")
def pipe(tiny_pack):
    return MakeAVideoPipeline(tiny_pack)


def test_full_cascade_shapes_range_and_timings(pipe):
    s = pipe.settings
    calls = []
    out = pipe(PROMPT, seed=3, callback=lambda stage, i, n: calls.append((stage, i, n)))
    n = (s.keyframes - 1) * s.frame_skip + 1
    assert out.frames.shape == (n, s.sr_image_size, s.sr_image_size, 3)
    assert out.frames.dtype == np.uint8
    assert out.fps == s.fps * s.frame_skip
    assert out.seed == 3 and out.unknown_words == []
    assert set(out.timings) == {"text_encoder", "prior", "keyframes", "interpolation", "sr_video", "sr_image"}
    stages = [c[0] for c in calls]
    assert stages.index("prior") < stages.index("keyframes") < stages.index("interpolation") < stages.index("sr_video") < stages.index("sr_image")
    # the last report of every stage says it finished
    for stage in ("prior", "keyframes", "interpolation", "sr_video", "sr_image"):
        last = [c for c in calls if c[0] == stage][-1]
        assert last[1] == last[2]
    # random weights still give varied pixels, not a constant image
    assert out.frames.std() > 1.0


def test_frame_count_follows_keyframes_and_skip(pipe):
    out = pipe(PROMPT, seed=0, num_keyframes=4, frame_skip=2, stop_after="interpolation")
    assert out.frames.shape[0] == (4 - 1) * 2 + 1
    assert out.frames.shape[1] == pipe.settings.keyframe_size


def test_same_seed_same_video_other_seed_other_video(pipe):
    a = pipe(PROMPT, seed=11).frames
    b = pipe(PROMPT, seed=11).frames
    c = pipe(PROMPT, seed=12).frames
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_unknown_words_reported_and_bad_prompts(pipe):
    out = pipe("a red zigzag moving left", seed=0, stop_after="keyframes")
    assert out.unknown_words == ["zigzag"]
    with pytest.raises(UserInputError, match="empty"):
        pipe("   ", seed=0)
    with pytest.raises(UserInputError, match="at most"):
        pipe("red " * 100, seed=0)


def test_interpolation_keeps_given_frames_exactly(pipe):
    g = torch.Generator().manual_seed(0)
    keys = torch.rand(1, 3, 3, 8, 8, generator=g) * 2 - 1
    out = pipe.interpolate_video(keys, frame_skip=3, fps=4.0, seed=0)
    assert out.shape == (1, 3, 7, 8, 8)
    assert torch.equal(out[:, :, ::3], keys)
    assert not torch.equal(out[:, :, 1], torch.zeros_like(out[:, :, 1]))
    # extrapolation: known frames at the start only
    video = torch.zeros(1, 3, 5, 8, 8)
    video[:, :, :2] = keys[:, :, :2]
    known = torch.tensor([True, True, False, False, False])
    out = pipe.fill_frames(video, known, frame_skip=1, fps=4.0, seed=0)
    assert torch.equal(out[:, :, :2], keys[:, :, :2])


def test_numpy_interpolate_api(pipe):
    frames = (np.random.default_rng(0).random((3, 8, 8, 3)) * 255).astype(np.uint8)
    out = pipe.interpolate(frames, factor=2, fps=10)
    assert out.frames.shape == (5, 8, 8, 3) and out.fps == 20
    assert np.array_equal(out.frames[::2], frames)


def test_streamed_interpolation_reports_sampler_steps_before_its_first_frame(pipe):
    """`mav interpolate --method diffusion` shows F_i's steps while the first run of frames is
    sampled, which on real footage takes minutes before any frame comes out."""
    frames = (np.random.default_rng(0).random((4, 8, 8, 3)) * 255).astype(np.uint8)
    events: list[tuple[str, int, int]] = []
    stream = pipe.interpolate_stream(iter(frames), 2, fps=10, chunk=3, steps=3,
                                     callback=lambda stage, done, total: events.append((stage, done, total)))
    first = next(stream)
    steps = [e for e in events if e[0] != "frames"]
    assert steps and steps[-1][1] == steps[-1][2] and all(0 < d <= t for _, d, t in steps)
    assert np.array_equal(first, frames[0])
    rest = list(stream)
    assert len(rest) == 6 and np.array_equal(rest[-1], frames[-1])
    assert len([e for e in events if e[0] != "frames"]) > len(steps)  # the second run reported its steps too


def test_sr_h_uses_the_same_noise_for_every_frame(pipe, monkeypatch):
    import mavcli.pipeline as P

    seen = []
    real = P.sample

    def spy(model, x, steps, **kw):
        seen.append(x.clone())
        return real(model, x, steps, **kw)

    monkeypatch.setattr(P, "sample", spy)
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    pipe.super_resolve_frames(video, seed=0)
    noise = torch.cat(seen)  # every chunk's initial noise, (frames, 3, S, S)
    assert noise.shape[0] == 5
    for i in range(1, 5):
        assert torch.equal(noise[i], noise[0])
    assert noise[0].std() > 0.5  # real noise, not zeros


@pytest.mark.parametrize("stage", ["sr_video", "sr_image"])
def test_sr_stages_can_start_from_their_upsampled_input(tiny_pack, stage):
    """sr_*_start < 1 (SDEdit): the stage starts from its bilinear-upsampled input noised to that
    time, so near 0 even a random network returns about the input; at 1 it draws from noise."""
    import dataclasses

    from mavcli.models.blocks import resize_frames

    def run(start):
        settings = dataclasses.replace(tiny_pack.settings, **{f"{stage}_start": start})
        p = MakeAVideoPipeline(dataclasses.replace(tiny_pack, settings=settings))
        fn = p.super_resolve_video if stage == "sr_video" else p.super_resolve_frames
        return fn(video, seed=0), p.settings

    video = torch.rand(1, 3, 3, 16, 16) * 2 - 1
    near, settings = run(0.02)
    size = getattr(settings, f"{stage}_size")
    low = resize_frames(video[0].transpose(0, 1), size).transpose(0, 1)[None]  # (1, 3, f, S, S)
    assert near.shape == low.shape
    assert (near - low).abs().mean() < 0.05
    far, _ = run(1.0)
    assert (far - low).abs().mean() > 0.3
    mid, _ = run(0.5)  # in between: partly the input, partly drawn
    assert (near - low).abs().mean() < (mid - low).abs().mean() < (far - low).abs().mean()
    with pytest.raises(ValueError, match=f"{stage}_start must be in"):
        dataclasses.replace(tiny_pack.settings, **{f"{stage}_start": 0.0})


@pytest.mark.parametrize("stage", ["sr_video", "sr_image"])
def test_sr_upsample_picks_how_the_sr_stages_enlarge_their_input(tiny_pack, stage):
    """Pack setting sr_upsample: the SR stages' conditioning and SDEdit start are the input
    enlarged that way (bicubic: sharper edges, clamped to [-1, 1]); an unknown mode is refused."""
    import dataclasses

    import torch.nn.functional as F

    from mavcli.models.blocks import resize_frames

    side = 8 if stage == "sr_video" else 16  # each stage's input size in the tiny pack
    video = torch.zeros(1, 3, 2, side, side) - 1.0
    video[..., side // 4:3 * side // 4, side // 4:3 * side // 4] = 1.0  # white on black: bicubic overshoots at the edges
    seen = []

    def run(mode):
        settings = dataclasses.replace(tiny_pack.settings, sr_upsample=mode, **{f"{stage}_start": 0.02})
        p = MakeAVideoPipeline(dataclasses.replace(tiny_pack, settings=settings))
        runner = p._sr_runner
        p._sr_runner = lambda net: (lambda x, t, *, extra, **kw: seen.append(extra.clone()) or runner(net)(x, t, extra=extra, **kw))
        fn = p.super_resolve_video if stage == "sr_video" else p.super_resolve_frames
        return fn(video, seed=0), p.settings

    out, settings = run("bicubic")
    size = getattr(settings, f"{stage}_size")
    frames = video[0].transpose(0, 1)  # (f, 3, side, side)
    bicubic = F.interpolate(frames, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)
    bilinear = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False)
    assert torch.equal(resize_frames(frames, size, "bicubic"), bicubic)
    assert (bicubic - bilinear).abs().max() > 0.2  # the two differ where it matters, at the edges
    cond = seen[0] if stage == "sr_image" else rearrange(seen[0], "b c f h w -> (b f) c h w")
    assert torch.allclose(cond.float(), bicubic, atol=1e-5)
    got = out[0].transpose(0, 1)
    edges = (bicubic - bilinear).abs() > 0.1  # where the two ways differ, the output follows bicubic
    assert (got - bicubic).abs()[edges].mean() < 0.5 * (got - bilinear).abs()[edges].mean()
    with pytest.raises(ValueError, match="sr_upsample must be one of bilinear, bicubic"):
        dataclasses.replace(tiny_pack.settings, sr_upsample="nearest")



def test_stage_samplers_pick_one_stage_sampler(tiny_pack):
    """Pack setting `stage_samplers` overrides `sampler` for the stages it names only; a
    caller's sampler (one name or a dict per stage) overrides the pack's."""
    import dataclasses

    settings = dataclasses.replace(tiny_pack.settings, sampler="dpmpp", stage_samplers={"keyframes": "ddpm"})
    mixed = MakeAVideoPipeline(dataclasses.replace(tiny_pack, settings=settings))
    plain = MakeAVideoPipeline(dataclasses.replace(tiny_pack, settings=dataclasses.replace(settings, stage_samplers={})))
    keyframes = lambda p, **kw: p(PROMPT, seed=4, stop_after="keyframes", **kw).frames  # noqa: E731
    ancestral = keyframes(mixed)
    assert np.array_equal(ancestral, keyframes(plain, sampler={"keyframes": "ddpm"}))
    assert not np.array_equal(ancestral, keyframes(plain))
    assert np.array_equal(keyframes(mixed, sampler="dpmpp"), keyframes(plain))
    # the prior, not named, keeps the pack's sampler
    tokens, mask, pooled, _ = mixed.encode_prompt([PROMPT])
    assert torch.equal(mixed.prior(tokens, mask, pooled, seed=1), plain.prior(tokens, mask, pooled, seed=1))
    with pytest.raises(ValueError, match="stage_samplers maps a stage"):
        dataclasses.replace(settings, stage_samplers={"keyframe": "ddpm"})

def test_guidance_one_equals_plain_conditional_sampling(pipe):
    tokens, mask, pooled, _ = pipe.encode_prompt([PROMPT])
    net = pipe.pack["prior"]
    x = torch.randn(1, net.config.embed_dim, generator=torch.Generator().manual_seed(0))
    from mavcli.diffusion import CosineSchedule

    plain = sample(lambda x, t: net(x, t, text_emb=pooled, context=tokens, context_mask=mask), x, 4,
                   schedule=CosineSchedule(), sampler="dpmpp")
    g1 = sample(guided(net, 1.0, text_emb=pooled, context=tokens, context_mask=mask), x, 4,
                schedule=CosineSchedule(), sampler="dpmpp")
    g3 = sample(guided(net, 3.0, text_emb=pooled, context=tokens, context_mask=mask), x, 4,
                schedule=CosineSchedule(), sampler="dpmpp")
    assert torch.equal(plain, g1)
    assert not torch.allclose(plain, g3)
    # through the pipeline: guidance=1 everywhere equals the per-stage conditional path
    a = pipe(PROMPT, seed=5, guidance=1.0, stop_after="keyframes").frames
    b = pipe(PROMPT, seed=5, guidance={"prior": 1.0, "keyframes": 1.0}, stop_after="keyframes").frames
    assert np.array_equal(a, b)


def test_save_load_bit_identical(tiny_pack, tiny_pack_dir):
    a = MakeAVideoPipeline(tiny_pack)(PROMPT, seed=1).frames
    b = MakeAVideoPipeline.from_pretrained(tiny_pack_dir)(PROMPT, seed=1).frames
    assert np.array_equal(a, b)


def test_float16_cast_and_back(tiny_pack, tmp_path):
    path = save_pack(tmp_path / "half", tiny_pack, dtype=torch.float16)
    with safe_open(str(path / "keyframes.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
    half = load_pack(path, dtype=torch.float16)
    assert next(half["keyframes"].parameters()).dtype == torch.float16
    back = load_pack(path)  # float32 network holding float16 values
    for (k, v), (_, w) in zip(tiny_pack["prior"].state_dict().items(), back["prior"].state_dict().items()):
        assert w.dtype == v.dtype
        assert torch.equal(w, v.half().to(v.dtype)), k
    # a float16 pack still generates (values close to the float32 pack's)
    out32 = MakeAVideoPipeline(tiny_pack)(PROMPT, seed=2, stop_after="keyframes").frames.astype(int)
    out16 = MakeAVideoPipeline(back)(PROMPT, seed=2, stop_after="keyframes").frames.astype(int)
    assert np.abs(out32 - out16).mean() < 8


def test_flipped_byte_in_a_folder_pack_is_caught(tiny_pack_dir, tmp_path):
    import shutil

    pack = tmp_path / "pack"
    shutil.copytree(tiny_pack_dir, pack)
    assert load_pack(pack).verified is True
    f = pack / "keyframes.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0x01  # a tensor byte: the file still parses and would load silently
    f.write_bytes(bytes(data))
    with pytest.raises(PackError, match="keyframes.safetensors does not match the sha256 recorded in pack.json"):
        load_pack(pack)


def test_tampered_pack_is_refused(tiny_pack_dir, unhashed_pack):
    import shutil

    # without recorded hashes (a pack from before they were written), so the strict loader speaks
    bad = unhashed_pack
    assert load_pack(bad).verified is False
    f = bad / "prior.safetensors"
    with safe_open(str(f), "pt") as h:
        meta = h.metadata()
    tensors = load_file(str(f))
    tensors.pop("query")
    tensors["stowaway"] = torch.zeros(1)
    save_file(tensors, str(f), metadata=meta)
    with pytest.raises(PackError, match=r"missing keys \['query'\].*unexpected keys \['stowaway'\]"):
        load_pack(bad)
    # a config that disagrees with the weights
    shutil.copy(tiny_pack_dir / "prior.safetensors", f)
    cfg = json.loads(meta["config"])
    cfg["dim"] = 32
    save_file(load_file(str(f)), str(f), metadata={**meta, "config": json.dumps(cfg)})
    with pytest.raises(PackError, match="shape mismatch"):
        load_pack(bad)
    # not safetensors at all, and a pack.json naming a file outside the pack
    (bad / "prior.safetensors").write_bytes(b"\x80\x04pickle?")
    with pytest.raises(PackError, match="not a valid safetensors"):
        load_pack(bad)
    index = json.loads((bad / "pack.json").read_text())
    index["stages"]["prior"] = "../prior.safetensors"
    (bad / "pack.json").write_text(json.dumps(index))
    with pytest.raises(PackError, match="plain file name"):
        load_pack(bad)
    # a setting out of range is named, not a crash deep in the sampler
    index = json.loads((tiny_pack_dir / "pack.json").read_text())
    index["settings"]["interp_start"] = 0.0
    (bad / "pack.json").write_text(json.dumps(index))
    shutil.copy(tiny_pack_dir / "prior.safetensors", f)
    with pytest.raises(PackError, match=r"PackSettings: invalid config: interp_start must be in \(0, 1\]"):
        load_pack(bad)


def test_tiled_evaluation_blends_to_the_exact_result_for_a_local_network():
    from mavcli.models.tiling import tiled

    conv = torch.nn.Conv2d(3, 3, 1)  # pointwise: tiles cannot change its output

    def net(x, t, extra):
        return conv(x) + extra * t.view(-1, 1, 1, 1)

    x, extra, t = torch.randn(2, 3, 40, 56), torch.randn(2, 3, 40, 56), torch.rand(2)
    seen = []

    def spy(x, t, extra):
        seen.append(tuple(x.shape[-2:]))
        return net(x, t, extra)

    with torch.no_grad():
        out = tiled(spy, 16, 6)(x, t, extra=extra)
        torch.testing.assert_close(out, net(x, t, extra), rtol=1e-5, atol=1e-5)
    assert set(seen) == {(16, 16)} and len(seen) == 4 * 5  # every call sees one tile size
    with pytest.raises(ValueError, match="overlap"):
        tiled(net, 16, 16)


def test_linear_blend_fills_between_and_beyond_known_frames():
    from mavcli.models.blocks import blend_known_frames, interp_conditioning

    video = torch.zeros(1, 1, 6, 1, 1)
    video[0, 0, 1] = 1.0
    video[0, 0, 4] = 4.0
    known = torch.tensor([False, True, False, False, True, False])
    out = blend_known_frames(video, known).flatten().tolist()
    assert out == [1.0, 1.0, 2.0, 3.0, 4.0, 4.0]
    # per-item masks, and F_i's conditioning: zeroed (the paper) or prefilled, then the mask
    pair = torch.cat([video, video])
    per_item = torch.stack([known, torch.tensor([True, False, False, False, True, False])])
    assert blend_known_frames(pair, per_item)[1].flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 4.0]
    zeroed = interp_conditioning(pair, per_item, prefill=False)
    assert zeroed[:, 0].flatten(1).tolist() == [[0.0, 1.0, 0.0, 0.0, 4.0, 0.0], [0.0, 0.0, 0.0, 0.0, 4.0, 0.0]]
    assert zeroed[:, 1].flatten(1).tolist() == per_item.float().tolist()
    filled = interp_conditioning(pair, per_item, prefill=True)
    assert filled[0, 0].flatten().tolist() == [1.0, 1.0, 2.0, 3.0, 4.0, 4.0]
    torch.testing.assert_close(filled[:, 1:], zeroed[:, 1:])


def test_decoder_reads_word_embeddings_when_the_pack_says_so(pipe, monkeypatch):
    """The keyframe decoder's context is the encoder's states followed by the word embeddings
    (motion words survive there); packs without the setting keep the states alone."""
    import dataclasses

    prompt = "a red circle moving left on a black background"
    tokens, mask, _, _ = pipe.encode_prompt([prompt])
    assert pipe.settings.decoder_word_tokens
    ctx, cmask = pipe.decoder_context([prompt], tokens, mask)
    n = tokens.shape[1]
    assert ctx.shape == (1, 2 * n, tokens.shape[2]) and torch.equal(cmask, torch.cat([mask, mask], 1))
    assert torch.equal(ctx[:, :n], tokens)
    ids, _, _ = pipe.pack.tokenizer.batch([prompt])
    words = pipe.pack["text_encoder"].word_tokens(ids)
    assert torch.allclose(ctx[:, n:], words)
    # word embeddings are layer-normalised: zero mean, unit variance per token
    assert torch.allclose(words.mean(-1), torch.zeros(1, n), atol=1e-5)
    monkeypatch.setattr(pipe, "settings", dataclasses.replace(pipe.settings, decoder_word_tokens=False))
    ctx, cmask = pipe.decoder_context([prompt], tokens, mask)
    assert ctx is tokens and cmask is mask


def test_decoder_words_keep_only_the_named_word_embeddings_for_the_decoder(pipe, monkeypatch):
    """`decoder_words`: every D^t call sees the states and, of the word embeddings, only the
    named words'; the matcher ranking the candidates still reads every word."""
    import dataclasses

    from mavcli.errors import PackError

    net, matcher = pipe.pack["keyframes"], pipe.pack["ranker" if "ranker" in pipe.pack.networks else "matcher"]
    seen, ranked = [], []
    forward, score = net.forward, matcher.score
    monkeypatch.setattr(net, "forward", lambda x, t, **kw: seen.append(kw["context_mask"].clone()) or forward(x, t, **kw))
    monkeypatch.setattr(matcher, "score", lambda x, t, c, m: ranked.append(m.clone()) or score(x, t, c, m))
    monkeypatch.setattr(pipe, "settings", dataclasses.replace(pipe.settings, decoder_words=("moving", "left")))
    pipe(PROMPT, seed=0, stop_after="keyframes", steps={"keyframes": 3}, candidates=2, matcher_guidance=0.0,
         select_times=())
    ids, mask, _ = pipe.pack.tokenizer.batch([PROMPT])
    vocab = pipe.pack.tokenizer.vocab
    words = mask & torch.isin(ids, torch.tensor([vocab.index("moving"), vocab.index("left")]))
    assert int(words.sum()) == 2 and seen and ranked
    for m in seen:
        n = m.shape[1] // 2
        assert torch.equal(m[:, :n], mask.expand_as(m[:, :n])) and torch.equal(m[:, n:], words.expand_as(m[:, n:]))
    for m in ranked:
        n = m.shape[1] // 2
        assert torch.equal(m[:, n:], mask.expand_as(m[:, n:]))
    monkeypatch.setattr(pipe, "settings", dataclasses.replace(pipe.settings, decoder_words=("moving", "sideways")))
    with pytest.raises(PackError, match="sideways"):
        pipe(PROMPT, seed=0, stop_after="keyframes", steps={"keyframes": 3}, candidates=1, matcher_guidance=0.0)


def test_decoder_drops_the_word_embeddings_below_decoder_words_until(pipe, monkeypatch):
    """`decoder_words_until`: D^t's calls above that diffusion time see the states and the words,
    those at or below it the states alone; the matcher's context is untouched."""
    import dataclasses

    net = pipe.pack["keyframes"]
    seen = []
    forward = net.forward

    def spy(x, t, **kw):
        seen.append((float(t.max()), kw["context_mask"].clone()))
        return forward(x, t, **kw)

    monkeypatch.setattr(net, "forward", spy)
    settings = dataclasses.replace(pipe.settings, decoder_words_until=0.5)
    monkeypatch.setattr(pipe, "settings", settings)
    pipe(PROMPT, seed=0, stop_after="keyframes", steps={"keyframes": 6}, candidates=1, matcher_guidance=0.0)
    assert {t > 0.5 for t, _ in seen} == {True, False}
    for t, mask in seen:
        n = mask.shape[1] // 2
        assert mask[:, :n].any(dim=1).all()
        assert mask[:, n:].any().item() == (t > 0.5 + 1e-6)
    with pytest.raises(ValueError, match="decoder_words_until"):
        dataclasses.replace(settings, decoder_words_until=1.0)


def test_a_request_that_cannot_fit_is_refused_with_the_most_that_fits(pipe):
    from mavcli.pipeline import MemoryLimitError

    need = pipe.estimate_memory(40)
    assert need > pipe.estimate_memory(39) > pipe.estimate_memory(1) > 0
    pipe.check_memory(40, available=need)  # just fits
    with pytest.raises(MemoryLimitError, match="the most that fits now is 39 keyframes") as err:
        pipe.check_memory(40, available=need - 1)
    assert err.value.most_keyframes == 39
    assert pipe.estimate_memory(3, candidates=4) > pipe.estimate_memory(3, candidates=1)
