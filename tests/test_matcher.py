"""The noised video-text matcher: its hard-negative captions, its loss, and how the pipeline
ranks and steers keyframe samples with it."""

import dataclasses

import numpy as np
import pytest
import torch

from mavcli import MakeAVideoPipeline
from mavcli.data.shapes import HELD_OUT, parse_caption, sample_spec
from mavcli.errors import PackError, UserInputError
from mavcli.models.matcher import MatcherConfig, VideoTextMatcher, matcher_loss, steady_size_loss
from mavcli.weights.pack import Pack

PROMPT = "a red circle moving left on a black background"


def test_contrast_captions_change_exactly_one_fact_and_never_name_a_held_out_pair():
    from mavcli.data.shapes import contrast_captions

    rng = np.random.default_rng(0)
    changed_facts = []
    for i in range(200):
        spec = sample_spec(rng)
        facts = spec.facts()
        captions = contrast_captions(spec, np.random.default_rng(i))
        assert len(captions) == 7
        for text in captions:
            parsed = parse_caption(text)
            diff = [k for k in facts if parsed[k] != facts[k]]
            assert len(diff) == 1, (text, facts)
            assert (parsed["colour"], parsed["shape"]) not in HELD_OUT
            changed_facts.append(diff[0])
        # the last four are the four other motions
        assert sorted(parse_caption(t)["motion"] for t in captions[3:]) == sorted(
            m for m in ("left", "right", "up", "down", "still") if m != spec.motion)
    assert changed_facts[:3] == ["colour", "shape", "background"]


def test_wordings_of_contrast_captions_vary():
    from mavcli.data.shapes import contrast_captions

    spec = sample_spec(np.random.default_rng(3), motions=["up"])
    seen = {c for i in range(50) for c in contrast_captions(spec, np.random.default_rng(i))}
    assert len(seen) > 30


def test_matcher_loss_counts_hard_negatives_and_ignores_same_fact_clips():
    torch.manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    t = v.clone()  # each clip matches its caption exactly
    far = -v[:, None, :]  # negatives point away
    same = torch.eye(4, dtype=torch.bool)
    scale = torch.tensor(10.0)
    easy = matcher_loss(v, t, far, scale, same)
    hard = matcher_loss(v, t, v[:, None, :].clone(), scale, same)  # a negative as good as the caption
    assert hard > easy + 0.5
    # a second clip with the same facts is not counted as a negative
    t2 = t.clone()
    t2[1] = t[0]
    same2 = same.clone()
    same2[0, 1] = same2[1, 0] = True
    v2 = v.clone()
    v2[1] = v[0]
    # (counted, the two rows would each split their probability in half: log 2 over 4 rows)
    assert matcher_loss(v2, t2, far, scale, same2) < 0.02
    assert matcher_loss(v2, t2, far, scale, same) > 0.3


def test_steady_size_loss_prefers_the_clip_to_its_size_changing_twin():
    torch.manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    scale = torch.tensor(10.0)
    right = steady_size_loss(v, -v, v, scale)  # captions match the steady clips
    wrong = steady_size_loss(-v, v, v, scale)  # captions match the twins
    tie = steady_size_loss(v, v, v, scale)
    assert right < 1e-6 and wrong > 15.0
    assert tie.item() == pytest.approx(np.log(2.0), abs=1e-6)


def test_matcher_takes_any_frame_count_and_size_and_rejects_images():
    m = VideoTextMatcher(MatcherConfig(text_dim=16, channels=(8, 16), embed_dim=8, pool_heads=2, time_dim=16))
    ctx, mask = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
    for f, h, w in ((1, 8, 8), (3, 12, 20)):
        s = m.score(torch.randn(2, 3, f, h, w), torch.rand(2), ctx, mask)
        assert s.shape == (2,) and torch.isfinite(s).all() and s.abs().max() <= m.scale() + 1e-5
    with pytest.raises(ValueError, match=r"\(b, 3, f, h, w\)"):
        m.score(torch.randn(2, 3, 8, 8), torch.rand(2), ctx, mask)


@pytest.fixture(scope="module")
def pipe(tiny_pack):
    return MakeAVideoPipeline(tiny_pack)


def _inputs(pipe, prompt=PROMPT):
    tokens, mask, pooled, _ = pipe.encode_prompt([prompt])
    emb = pipe.prior(tokens, mask, pooled, seed=0)
    ctx, cmask = pipe.decoder_context([prompt], tokens, mask)
    return emb, ctx, cmask


def _record_scores(pipe, monkeypatch) -> list:
    """Every call of the matcher's score from now on: (video, t, context, score)."""
    matcher = pipe.pack["matcher"]
    seen = []
    score = matcher.score

    def recording(video, t, context, mask):
        s = score(video, t, context, mask)
        seen.append((video.clone(), t.clone(), context.clone(), s.clone()))
        return s

    monkeypatch.setattr(matcher, "score", recording)
    return seen


def test_candidates_keep_the_clip_the_matcher_scores_highest(pipe, monkeypatch):
    emb, ctx, cmask = _inputs(pipe)
    single = pipe.keyframes(emb, ctx, cmask, seed=5, candidates=1)
    seen = _record_scores(pipe, monkeypatch)
    best = pipe.keyframes(emb, ctx, cmask, seed=5, candidates=4)
    (videos, t, _, scores), = seen
    assert videos.shape[0] == 4 and torch.equal(t, torch.zeros(4))  # clean clips are judged
    assert torch.equal(best[0], videos[int(scores.argmax())])
    # candidate 0 is the clip a single sample gives (same noise)
    assert torch.allclose(videos[0], single[0], atol=1e-4)
    assert len({round(float(s), 5) for s in scores}) > 1


def test_a_packs_ranker_ranks_the_candidates_while_its_matcher_steers(tiny_pack, monkeypatch):
    """With a ranker in the pack, every ranking (early, on noisy clips, and of the finished
    ones) is the ranker's, and the matcher only steers."""
    import copy

    from conftest import randomise

    ranker = copy.deepcopy(tiny_pack.networks["matcher"])
    randomise(ranker, seed=99)
    pipe = MakeAVideoPipeline(Pack(None, {**tiny_pack.networks, "ranker": ranker}, tiny_pack.tokenizer, tiny_pack.settings))
    emb, ctx, cmask = _inputs(pipe)
    calls = {"matcher": [], "ranker": []}
    for name in calls:
        net = pipe.pack[name]
        monkeypatch.setattr(net, "score", (lambda score, seen: lambda x, t, c, m: seen.append((x, t)) or score(x, t, c, m))(
            net.score, calls[name]))
    out = pipe.keyframes(emb, ctx, cmask, seed=3, candidates=4, matcher_guidance=2.0, select_times=(0.5,))
    assert [x.shape[0] for x, _ in calls["ranker"]] == [4]  # one cut at 0.5: 4 noisy clips judged
    assert float(calls["ranker"][0][1][0]) <= 0.5
    assert calls["matcher"] and all(x.requires_grad for x, _ in calls["matcher"])  # steering only
    calls["ranker"].clear()
    finished = pipe.keyframes(emb, ctx, cmask, seed=3, candidates=4, select_times=())
    (videos, t), = calls["ranker"]
    scores = ranker.score(videos, t, ctx.repeat(4, 1, 1), cmask.repeat(4, 1))
    assert torch.equal(finished[0], videos[int(scores.argmax())])
    assert out.shape == finished.shape


def test_candidates_are_ranked_per_prompt_in_a_batch(pipe, monkeypatch):
    prompts = [PROMPT, "a blue square moving up on a white background"]
    tokens, mask, pooled, _ = pipe.encode_prompt(prompts)
    emb = pipe.prior(tokens, mask, pooled, seed=0)
    ctx, cmask = pipe.decoder_context(prompts, tokens, mask)
    seen = _record_scores(pipe, monkeypatch)
    out = pipe.keyframes(emb, ctx, cmask, seed=2, candidates=3)
    assert out.shape == (2, 3, pipe.settings.keyframes, pipe.settings.keyframe_size, pipe.settings.keyframe_size)
    (videos, _, context, scores), = seen
    for i in range(2):
        rows = [j * 2 + i for j in range(3)]  # candidate-major: prompt i's candidates
        assert all(torch.equal(context[r], ctx[i]) for r in rows)  # judged against its own prompt
        best = rows[int(scores[rows].argmax())]
        assert torch.equal(out[i], videos[best])


def test_matcher_guidance_raises_the_matchers_score(pipe):
    emb, ctx, cmask = _inputs(pipe)
    matcher = pipe.pack["matcher"]
    zero = torch.zeros(1)
    plain = pipe.keyframes(emb, ctx, cmask, seed=1)
    assert torch.equal(pipe.keyframes(emb, ctx, cmask, seed=1, matcher_guidance=0.0), plain)
    scores = [matcher.score(pipe.keyframes(emb, ctx, cmask, seed=1, matcher_guidance=g), zero, ctx, cmask).item()
              for g in (0.0, 2.0, 8.0)]
    assert scores[0] < scores[1] < scores[2], scores


def test_a_pack_without_a_matcher_refuses_candidates_with_a_clear_error(tiny_pack):
    networks = {k: v for k, v in tiny_pack.networks.items() if k != "matcher"}
    pipe = MakeAVideoPipeline(Pack(None, networks, tiny_pack.tokenizer, tiny_pack.settings))
    emb, ctx, cmask = _inputs(pipe)
    assert pipe.keyframes(emb, ctx, cmask, seed=0).shape[0] == 1  # the default needs no matcher
    with pytest.raises(PackError, match="no matcher"):
        pipe.keyframes(emb, ctx, cmask, seed=0, candidates=2)
    with pytest.raises(PackError, match="no matcher"):
        pipe(PROMPT, seed=0, stop_after="keyframes", matcher_guidance=1.0)
    with pytest.raises(UserInputError, match="candidates must be >= 1"):
        MakeAVideoPipeline(tiny_pack).keyframes(emb, ctx, cmask, seed=0, candidates=0)
    with pytest.raises(ValueError, match="keyframe_candidates"):
        dataclasses.replace(tiny_pack.settings, keyframe_candidates=0)


def test_ranking_early_keeps_the_clips_the_full_run_makes_of_those_candidates(pipe, monkeypatch):
    """select_times: successive halving on the noisy clips. At the first time the worse half of
    the candidates stops, at the last all but the best; the clip kept ends as that candidate
    ends in the run that keeps all of them (same noise)."""
    emb, ctx, cmask = _inputs(pipe)
    steps = 8
    ts = pipe._schedule(pipe.settings.keyframe_size).timesteps(steps, "time").tolist()
    full_seen = _record_scores(pipe, monkeypatch)
    kw = dict(candidates=4, steps=steps, sampler="ddpm")
    pipe.keyframes(emb, ctx, cmask, seed=3, select_times=(), **kw)
    all_four = full_seen[-1][0]  # the finished clips of every candidate
    monkeypatch.undo()
    seen = _record_scores(pipe, monkeypatch)
    early = pipe.keyframes(emb, ctx, cmask, seed=3, select_times=(ts[2], ts[5]), **kw)
    (first, t1, _, s1), (second, t2, _, s2) = seen  # two rankings: after 2 steps, after 5
    assert first.shape[0] == 4 and torch.allclose(t1, torch.full((4,), ts[2]))
    assert second.shape[0] == 2 and torch.allclose(t2, torch.full((2,), ts[5]))
    halved = sorted(s1.topk(2).indices.tolist())  # the better half, in candidate order
    best = halved[int(s2.argmax())]
    torch.testing.assert_close(early[0], all_four[best], atol=1e-4, rtol=0)
    # with steering on, a candidate's gradient is taken only while it is still sampled
    seen.clear()
    pipe.keyframes(emb, ctx, cmask, seed=3, matcher_guidance=1.0, select_times=(ts[2], ts[5]), **kw)
    assert [v.shape[0] for v, *_ in seen] == [4, 4, 4] + [2, 2, 2, 2] + [1] * (steps - 5)
    for bad in ((1.0,), (0.0,), (0.3, 0.6)):
        with pytest.raises(UserInputError, match="selection times"):
            pipe.keyframes(emb, ctx, cmask, seed=3, candidates=4, select_times=bad)
    with pytest.raises(ValueError, match="keyframe_select_times"):
        dataclasses.replace(pipe.settings, keyframe_select_times=(0.5, 0.8))


def test_halving_ranks_each_prompt_of_a_batch_among_its_own_candidates(pipe, monkeypatch):
    prompts = [PROMPT, "a blue square moving up on a white background"]
    tokens, mask, pooled, _ = pipe.encode_prompt(prompts)
    emb = pipe.prior(tokens, mask, pooled, seed=0)
    ctx, cmask = pipe.decoder_context(prompts, tokens, mask)
    steps = 6
    ts = pipe._schedule(pipe.settings.keyframe_size).timesteps(steps, "time").tolist()
    kw = dict(candidates=4, steps=steps, sampler="ddpm")
    seen = _record_scores(pipe, monkeypatch)
    pipe.keyframes(emb, ctx, cmask, seed=4, select_times=(), **kw)
    every = seen[-1][0]  # (4 candidates x 2 prompts), candidate-major
    seen.clear()
    out = pipe.keyframes(emb, ctx, cmask, seed=4, select_times=(ts[1], ts[3]), **kw)
    (_, _, c1, s1), (_, _, c2, s2) = seen
    for i in range(2):
        mine = [j * 2 + i for j in range(4)]
        assert all(torch.equal(c1[r], ctx[i]) for r in mine)  # each judged against its own prompt
        halved = sorted(j for j in range(4) if s1[j * 2 + i] >= s1[mine].sort().values[2])
        assert torch.equal(c2[i], ctx[i]) and torch.equal(c2[2 + i], ctx[i])  # still candidate-major
        best = halved[int(s2[[i, 2 + i]].argmax())]
        torch.testing.assert_close(out[i], every[best * 2 + i], atol=1e-4, rtol=0)
