"""`mav interpolate` as a frame-rate tool: any target fps (timestamps read back from the
container), variable-frame-rate input, containers and lossless output, audio kept in sync in
every mode, folders of videos (a broken file, a resumed batch), and bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from typer.testing import CliRunner

from mavcli.cli.app import app
from mavcli.retime import plan_pairs, retiming
from mavcli.video import frame_times, probe_video, read_video, write_video
from mavcli.video.read import packet_times

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def run(*args):
    return CliRunner().invoke(app, ["interpolate", *map(str, args)])


def lavfi(out: Path, *, rate: str, seconds: float, size: str = "64x48", audio: bool = False, extra=(),
          codec=("-c:v", "libx264", "-pix_fmt", "yuv420p"), pattern="testsrc2") -> Path:
    cmd = [FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"{pattern}=size={size}:rate={rate}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
    cmd += ["-t", str(seconds), *extra, *codec]
    cmd += (["-c:a", "aac", "-shortest"] if audio else []) + [str(out)]
    subprocess.run(cmd, check=True)
    return out


def audio_seconds(path: Path) -> float:
    got = packet_times(path, "a:0")
    assert got is not None, f"{path} has no audio"
    return got[1]


def video_seconds(path: Path) -> float:
    return packet_times(path, "v:0")[1]


def test_retiming_grids():
    r = retiming(25.0, 2.0, fps=60)
    assert len(r.out_times) == 120 and r.out_times[12] == pytest.approx(0.2)
    ntsc = 24000 / 1001
    r = retiming(ntsc, 48 / ntsc, fps=60)
    assert len(r.out_times) == 121  # ceil(2.002 s * 60)
    assert len(retiming(25.0, 1.0, factor=3).out_times) == 75 and retiming(25.0, 1.0, factor=3).fps == 75
    slow = retiming(25.0, 1.0, slowmo=4)
    assert len(slow.out_times) == 100 and slow.fps == 25
    plan = plan_pairs([0.0, 1.0, 2.0, 3.0], [0.0, 0.5, 1.0, 1.25, 2.5, 3.0, 3.5], cuts=[2])
    assert plan == [[0.0, 0.5], [0.0, 0.0], [0.5], [0.0, 0.0]]  # 1.25 spans the cut: frame 1; after the end: hold
    plan = plan_pairs([0.0, 1.0, 2.0], [0.0, 0.4, 0.6, 1.0], cuts=[1])
    assert plan == [[0.0, 0.0, 1.0], [0.0], []]  # across the cut: the nearer frame, never a blend
    for bad in (dict(fps=20), dict(fps=0), dict(fps=-5), dict(factor=1), dict(factor=0), dict(slowmo=1)):
        with pytest.raises(Exception):
            retiming(25.0, 1.0, **bad)


@pytest.mark.parametrize(("rate", "frames", "target", "out_fps"),
                         [("24000/1001", 48, "60", 60.0), ("25", 50, "60", 60.0), ("24000/1001", 48, "59.94", 60000 / 1001)])
def test_any_target_fps_places_every_frame_at_its_time(tmp_path, rate, frames, target, out_fps):
    src = lavfi(tmp_path / "in.mp4", rate=rate, seconds=frames / eval(rate) - 0.001)
    decoded = read_video(src).frames
    assert len(decoded) == frames
    out = tmp_path / "out.mkv"
    r = run(src, "--fps", target, "--lossless", "--out", out)
    assert r.exit_code == 0, r.output
    in_fps = eval(rate)
    expect = int(np.ceil(frames / in_fps * out_fps - 1e-6))
    times = frame_times(out)
    assert len(times.times) == expect and not times.variable and times.fps == pytest.approx(out_fps, abs=1e-4)
    got, end = packet_times(out)  # the container's own timestamps
    assert np.allclose(got, np.arange(expect) / out_fps, atol=1e-3)
    assert end == pytest.approx(frames / in_fps, abs=1 / out_fps)  # the duration is kept
    back = read_video(out).frames
    assert len(back) == expect
    kept = coincide = 0
    for k in range(expect):  # where an output time is an input frame's time, that frame is kept
        i = k * in_fps / out_fps
        if abs(i - round(i)) < 1e-6 and round(i) < frames:
            coincide += 1
            kept += np.array_equal(back[k], decoded[round(i)])
    # 23.976 -> 60 share only t = 0 within 2 s; 25 -> 60 every 0.2 s; 23.976 -> 59.94 every 5th output frame
    assert kept == coincide == {"60": 1 if rate != "25" else 10, "59.94": 24}[target]
    # and between them the frames are new: not copies of either neighbour
    k = 1
    assert not np.array_equal(back[k], decoded[0]) and not np.array_equal(back[k], decoded[1])


def test_frame_rates_as_people_write_them():
    from mavcli.retime import parse_rate

    assert parse_rate("60") == 60.0 and parse_rate("12.5") == 12.5
    for text, n in (("23.976", 24), ("23.98", 24), ("29.97", 30), ("59.94", 60), ("59.940", 60), ("119.88", 120),
                    ("60000/1001", 60)):
        assert parse_rate(text) == n * 1000 / 1001, text
    for bad in ("fast", "0", "-25", "1/0", "nan", "inf"):
        r = run("missing.mp4", "--fps", bad)
        assert r.exit_code == 2 and "--fps" in r.output, bad


def test_variable_frame_rate_input_uses_its_timestamps(tmp_path):
    # 10 frames at 25 fps, then frames every 0.08 s: timestamps, not the nominal rate, place them
    src = lavfi(tmp_path / "vfr.mp4", rate="25", seconds=1,
                extra=["-vf", "setpts='if(lt(N,10),N/25/TB,(N*2-10)/25/TB)'", "-fps_mode", "vfr"])
    ft = frame_times(src)
    assert ft.variable and ft.times[10] == pytest.approx(0.4) and ft.times[11] == pytest.approx(0.48)
    decoded = read_video(src).frames
    out = tmp_path / "cfr.mkv"
    r = run(src, "--fps", 50, "--lossless", "--out", out)
    assert r.exit_code == 0, r.output
    assert "variable frame rate" in r.output
    back = read_video(out).frames
    assert len(back) == int(np.ceil(ft.duration * 50 - 1e-6))
    for i, t in enumerate(ft.times):  # every input time is on the 50 fps grid: each frame kept at its time
        assert np.array_equal(back[round(t * 50)], decoded[i]), i


def test_containers_and_lossless_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 57, 101, 3), dtype=np.uint8)  # odd size on purpose
    from mavcli.video import Encoding

    for name in ("a.mkv", "b.mov", "c.mp4", "d.webm"):
        path = write_video(tmp_path / name, frames, 24, encoding=Encoding(lossless=True))
        back = read_video(path)
        assert np.array_equal(back.frames, frames), name  # lossless equals the frames in memory
    ffv1 = write_video(tmp_path / "e.mkv", frames, 24, encoding=Encoding(codec="ffv1"))
    assert probe_video(ffv1).codec == "ffv1" and np.array_equal(read_video(ffv1).frames, frames)
    vp9 = write_video(tmp_path / "f.webm", frames, 24)
    assert "101x57" in subprocess.run([FFMPEG, "-hide_banner", "-i", str(vp9)], capture_output=True, text=True).stderr


def test_odd_size_kept_and_codec_options(tmp_path):
    src = lavfi(tmp_path / "odd.mkv", rate="25", seconds=0.4, size="101x57", codec=("-c:v", "ffv1"), pattern="testsrc")
    assert read_video(src).frames.shape[1:3] == (57, 101)
    for out, args in ((tmp_path / "o.mp4", []), (tmp_path / "o.webm", []), (tmp_path / "o.mkv", ["--codec", "libx265", "--crf", "20"])):
        r = run(src, "--out", out, *args)
        assert r.exit_code == 0, r.output
        v = read_video(out)
        assert v.frames.shape[1:3] == (57, 101), out
    assert probe_video(tmp_path / "o.mkv").codec == "hevc"
    r = run(src, "--out", tmp_path / "x.mp4", "--codec", "ffv1")
    assert r.exit_code == 2 and "cannot hold --codec ffv1" in r.output and "mkv" in r.output
    r = run(src, "--out", tmp_path / "x.webm", "--codec", "libx264")
    assert r.exit_code == 2 and ".webm takes libvpx-vp9" in r.output
    r = run(src, "--out", tmp_path / "x.mp4", "--crf", "99")
    assert r.exit_code == 2 and "--crf" in r.output
    r = run(src, "--out", tmp_path / "f32.mkv", "--precision", "float32")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "f32.mkv.json").read_text())["precision"] == "float32"
    r = run(src, "--out", tmp_path / "x.mp4", "--precision", "half")
    assert r.exit_code == 2 and "--precision 'half'" in r.output and "float32" in r.output
    assert not list(tmp_path.glob("x.*")) and not list(tmp_path.glob(".x*"))


def test_audio_stays_in_sync_in_every_mode(tmp_path):
    src = lavfi(tmp_path / "a.mp4", rate="25", seconds=1.2, audio=True)
    base, base_audio = video_seconds(src), audio_seconds(src)
    cases = [("x2.mp4", ["--factor", 2], 1), ("x3.mkv", ["--factor", 3], 1), ("60.mov", ["--fps", 60], 1),
             ("slow.mp4", ["--slowmo", 3, "--audio", "stretch"], 3)]
    for name, args, stretch in cases:
        out = tmp_path / name
        r = run(src, *args, "--out", out)
        assert r.exit_code == 0, r.output
        v, a = video_seconds(out), audio_seconds(out)
        assert v == pytest.approx(base * stretch, abs=0.05), name
        assert a == pytest.approx(min(v, base_audio * stretch), abs=0.06), (name, a, v)  # as long as before, never past the video
    r = run(src, "--slowmo", 2, "--out", tmp_path / "quiet.mp4")
    assert r.exit_code == 0 and "audio left out" in r.output and not probe_video(tmp_path / "quiet.mp4").has_audio
    r = run(src, "--slowmo", 2, "--audio", "copy", "--out", tmp_path / "bad.mp4")
    assert r.exit_code == 2 and "out of sync" in " ".join(r.output.split()) and not (tmp_path / "bad.mp4").exists()


def test_folder_batch_reports_a_broken_file_and_resumes(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    lavfi(videos / "a.mp4", rate="25", seconds=0.4)
    lavfi(videos / "c.mkv", rate="25", seconds=0.4)
    (videos / "b.mp4").write_bytes(b"not a video at all")
    (videos / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    r = run(videos, "--out", out)
    assert r.exit_code == 1, r.output
    assert "b.mp4" in r.output and "2 written, 0 skipped, 1 failed" in " ".join(r.output.split())
    assert sorted(p.name for p in out.iterdir()) == ["a.mp4", "a.mp4.json", "c.mkv", "c.mkv.json"]  # nothing half-written
    assert len(read_video(out / "a.mp4").frames) == 20
    (videos / "b.mp4").unlink()
    stamp = (out / "a.mp4").stat().st_mtime_ns
    r = run(videos, "--out", out)
    assert r.exit_code == 0, r.output
    assert "skipped 2 already finished" in " ".join(r.output.split())
    assert (out / "a.mp4").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(("args", "message"), [
    (["--fps", "10"], "not above the input's 25 fps"),
    (["--fps", "0"], "positive"),
    (["--fps", "-3"], "positive"),
    (["--factor", "0"], "--factor must be"),
    (["--factor", "1"], "--factor must be"),
    (["--slowmo", "1"], "--slowmo must be"),
    (["--factor", "2", "--fps", "50"], "not --factor and --fps"),
    (["--audio", "stretch"], "applies to --slowmo"),
    (["--method", "diffusion", "--fps", "60"], "use --method flow"),
    (["--input-fps", "30"], "sets the rate of a folder of frames"),
])
def test_bad_requests_exit_2_and_write_nothing(tmp_path, args, message):
    src = lavfi(tmp_path / "in.mp4", rate="25", seconds=0.4)
    r = run(src, *args, "--out", tmp_path / "o.mp4")
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.output.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


def test_a_folder_of_frames_takes_its_rate_from_input_fps(tmp_path):
    """Frames from elsewhere state no rate: 24 fps with a note, or --input-fps; the output folder
    records its rate, so interpolating it again needs no option."""
    frames = tmp_path / "frames"
    frames.mkdir()
    subprocess.run([FFMPEG, "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=30", "-t", "0.4",
                    str(frames / "f%03d.png")], check=True)
    r = run(frames, "--out", tmp_path / "default.mp4")
    assert r.exit_code == 0, r.output
    assert "state no frame rate: taken as 24 fps" in " ".join(r.output.split())
    assert probe_video(tmp_path / "default.mp4").fps == 48
    r = run(frames, "--input-fps", "30", "--fps", "60000/1001", "--out", tmp_path / "ntsc")
    assert r.exit_code == 0, r.output
    assert "state no frame rate" not in r.output and "30 -> 59.94 fps" in r.output
    again = run(tmp_path / "ntsc", "--out", tmp_path / "again.mkv", "--lossless")
    assert again.exit_code == 0 and "state no frame rate" not in again.output
    assert probe_video(tmp_path / "again.mkv").fps == pytest.approx(2 * 60000 / 1001)
    assert frame_times(frames, folder_rate=30).duration == pytest.approx(12 / 30)


def test_an_existing_sidecar_is_refused_before_any_work(tmp_path):
    src = lavfi(tmp_path / "in.mp4", rate="25", seconds=0.4)
    (tmp_path / "o.mp4.json").write_text("{}")
    r = run(src, "--out", tmp_path / "o.mp4")
    assert r.exit_code == 2 and "o.mp4.json already exists" in " ".join(r.output.split())
    assert (tmp_path / "o.mp4.json").read_text() == "{}" and not (tmp_path / "o.mp4").exists()
    assert "interpolate" not in r.output  # refused before the progress bar started


def test_a_file_cut_short_is_interpolated_as_far_as_it_decodes_with_a_note(tmp_path):
    whole = lavfi(tmp_path / "whole.mp4", rate="25", seconds=4, size="160x120", audio=True,
                  extra=("-movflags", "+faststart"))  # the index first, as a download that stopped would have it
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    r = run(cut, "--out", tmp_path / "o.mp4")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "says it lasts 4.00s, but its frames end at" in text and "cut short or damaged" in text
    end = video_seconds(tmp_path / "o.mp4")
    assert 0.5 < end < 3.5 and audio_seconds(tmp_path / "o.mp4") < end + 0.05  # audio as far as it survived
    # a whole file, and one whose audio outlasts its video, get no such note
    assert "cut short" not in run(whole, "--out", tmp_path / "w.mp4").output
    longer = lavfi(tmp_path / "longer.mp4", rate="25", seconds=1, size="160x120")
    subprocess.run([FFMPEG, "-loglevel", "error", "-i", str(longer), "-f", "lavfi", "-t", "3", "-i",
                    "sine=frequency=440", "-c:v", "copy", "-c:a", "aac", str(tmp_path / "tail.mp4")], check=True)
    assert "cut short" not in run(tmp_path / "tail.mp4", "--out", tmp_path / "t.mp4").output


def test_an_output_that_cannot_fit_on_its_disk_is_refused_before_any_frame(tmp_path, monkeypatch):
    """PNG frames or lossless video of many frames on a nearly full disk: refused up front with
    the least size it needs; a lossy mp4 of the same frames fits and is written."""
    import shutil

    src = lavfi(tmp_path / "in.mp4", rate="25", seconds=1, size="160x120")
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=150_000))
    for out, args in (("frames", []), ("exact.mkv", ["--lossless"])):
        r = run(src, "--out", tmp_path / out, *args)
        text = " ".join(r.output.split())
        assert r.exit_code == 2 and f"{out} needs at least about" in text and "150 kB free" in text, r.output
        assert "(50 frames" in text
    r = run(src, "--out", tmp_path / "small.mp4")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "small.mp4", "small.mp4.json"]


def test_too_small_and_empty_inputs(tmp_path):
    tiny = lavfi(tmp_path / "tiny.mp4", rate="25", seconds=0.2, size="2x2")
    r = run(tiny, "--out", tmp_path / "o.mp4")
    assert r.exit_code == 2 and "at least 12x12" in " ".join(r.output.split())
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run(empty, "--out", tmp_path / "o2.mp4")
    assert r.exit_code == 2 and "no videos and no frames" in " ".join(r.output.split())
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "o2.mp4").exists()


def test_subtitles_and_every_audio_stream_are_carried(tmp_path):
    srt = tmp_path / "s.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:00,800\nhello\n")
    src = tmp_path / "in.mkv"
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-f", "lavfi", "-i", "sine=frequency=660:sample_rate=48000",
                    "-i", str(srt), "-map", "0:v", "-map", "1:a", "-map", "2:a", "-map", "3:s", "-t", "0.8",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-c:s", "srt", str(src)], check=True)

    def streams(path):
        text = subprocess.run([FFMPEG, "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
        return [ln.split(": ")[1] for ln in text.splitlines() if ln.strip().startswith("Stream #")]

    assert streams(src) == ["Video", "Audio", "Audio", "Subtitle"]
    for name, sub in (("o.mkv", "subrip"), ("o.mp4", "mov_text")):
        r = run(src, "--out", tmp_path / name)
        assert r.exit_code == 0, r.output
        assert streams(tmp_path / name) == ["Video", "Audio", "Audio", "Subtitle"], name
        text = subprocess.run([FFMPEG, "-hide_banner", "-i", str(tmp_path / name)], capture_output=True, text=True).stderr
        assert f"Subtitle: {sub}" in text


def test_pixel_format_colour_tags_and_aspect_ratio_are_carried(tmp_path):
    from mavcli.video.common import _ffmpeg_header
    from mavcli.video.encoding import Colour, parse_stream

    # anamorphic 4:2:2 BT.709 footage: 720x480 pixels shown at 16:9 (a pixel 32/27 as wide as high)
    src = lavfi(tmp_path / "dv.mkv", rate="30000/1001", seconds=0.3, size="176x120",
                extra=("-vf", "setsar=32/27,setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709:range=tv"),
                codec=("-c:v", "libx264", "-pix_fmt", "yuv422p"))
    source = parse_stream(_ffmpeg_header(src))
    assert source.pix_fmt == "yuv422p" and source.sar == (32, 27)
    assert source.colour == Colour("tv", "bt709", "bt709", "bt709")
    for name, args, pix in (("o.mp4", [], "yuv422p"), ("o.mov", [], "yuv422p"), ("o.webm", [], "yuv422p"),
                            ("l.mkv", ["--lossless"], "bgr0"), ("s.mp4", ["--pix-fmt", "yuv420p"], "yuv420p")):
        r = run(src, "--out", tmp_path / name, *args)
        assert r.exit_code == 0, r.output
        got = parse_stream(_ffmpeg_header(tmp_path / name))
        assert got.pix_fmt == pix, name
        if name == "o.webm":  # Matroska stores a display size: 176 * 32/27 = 208.6 -> 209 px wide
            assert got.sar is not None and abs(got.sar[0] / got.sar[1] - 32 / 27) < 0.01
        else:
            assert got.sar == (32, 27), name
        if not args or args[0] != "--lossless":  # RGB output has no YUV matrix to tag
            assert got.colour == Colour("tv", "bt709", "bt709", "bt709"), name
    r = run(src, "--out", tmp_path / "o.gif")
    assert r.exit_code == 0 and "SAR 32:27" in " ".join(r.output.split())
    # square pixels need no tag: the header then states none and nothing is carried
    plain = lavfi(tmp_path / "sq.mp4", rate="25", seconds=0.2)
    assert parse_stream(_ffmpeg_header(plain)).sar is None
    assert parse_stream(_ffmpeg_header(plain)).field_order is None
    assert "interlaced" not in run(plain, "--out", tmp_path / "sq2.mp4").output
    # 10-bit input keeps its format, and the note says the extra precision is not kept
    deep = lavfi(tmp_path / "deep.mkv", rate="25", seconds=0.2, codec=("-c:v", "libx265", "-pix_fmt", "yuv420p10le"))
    r = run(deep, "--out", tmp_path / "deep2.mkv")
    assert r.exit_code == 0 and "10 bits per channel" in " ".join(r.output.split())
    assert parse_stream(_ffmpeg_header(tmp_path / "deep2.mkv")).pix_fmt == "yuv420p10le"
    # transparency cannot pass through RGB frames: the note says the output is opaque
    clear = lavfi(tmp_path / "alpha.mov", rate="25", seconds=0.2, extra=("-vf", "format=rgba"),
                  codec=("-c:v", "qtrle"))
    assert parse_stream(_ffmpeg_header(clear)).pix_fmt == "argb"
    r = run(clear, "--out", tmp_path / "alpha2.mkv")
    assert r.exit_code == 0 and "alpha channel (argb)" in " ".join(r.output.split())
    # interlaced input is interpolated as stored, with a note that says how to deinterlace
    woven = lavfi(tmp_path / "tff.mp4", rate="25", seconds=0.2, extra=("-vf", "setfield=tff", "-flags", "+ildct+ilme"))
    assert parse_stream(_ffmpeg_header(woven)).field_order == "top first"
    r = run(woven, "--out", tmp_path / "tff2.mp4")
    assert r.exit_code == 0 and "interlaced (top first)" in r.output and "bwdif" in " ".join(r.output.split())


def test_a_turned_anamorphic_video_keeps_its_shape(tmp_path):
    """A display matrix (as phones write) turns 176x120 pixels of SAR 32:27 upright: the frames
    arrive 120x176, so each pixel is now 27/32 as wide as high, as the output must say."""
    from mavcli.video.common import _ffmpeg_header, stream_rotation
    from mavcli.video.encoding import parse_stream

    flat = lavfi(tmp_path / "flat.mp4", rate="25", seconds=0.3, size="176x120", extra=("-vf", "setsar=32/27"))
    turned = tmp_path / "turned.mp4"
    subprocess.run([FFMPEG, "-loglevel", "error", "-display_rotation", "90", "-i", str(flat), "-c", "copy",
                    str(turned)], check=True)
    assert stream_rotation(_ffmpeg_header(turned), 0) == 90 and stream_rotation(_ffmpeg_header(flat), 0) == 0
    assert parse_stream(_ffmpeg_header(turned)).sar == (27, 32)
    r = run(turned, "--out", tmp_path / "o.mp4")
    assert r.exit_code == 0, r.output
    assert "frame size for reading" not in r.output  # imageio-ffmpeg's note on the turn is left out
    header = _ffmpeg_header(tmp_path / "o.mp4")
    assert ", 120x176 [SAR 27:32 DAR " in header and stream_rotation(header, 0) == 0


def test_frames_too_large_for_memory_are_refused_before_any_work(tmp_path, monkeypatch):
    from mavcli.errors import UserInputError
    from mavcli.interpolator import FlowInterpolator

    gib = 2**30
    FlowInterpolator.check_memory(1920, 1080, available=2 * gib)  # fits
    with pytest.raises(UserInputError, match=r"3840x2160 frames needs about 4\.5 GiB .* 2\.0 GiB is available") as e:
        FlowInterpolator.check_memory(3840, 2160, available=2 * gib)
    fit_h = int(str(e.value).split("scale=-2:")[1].split()[0])
    assert 1400 < fit_h < 2160 and FlowInterpolator.estimate_memory(fit_h * 16 // 9, fit_h) <= 2 * gib
    # the CLI checks before it decodes anything, and writes nothing
    src = lavfi(tmp_path / "in.mp4", rate="25", seconds=0.2)
    monkeypatch.setattr("mavcli.runtime.available_memory", lambda: 1000)
    r = run(src, "--out", tmp_path / "o.mp4", "--device", "cpu")
    assert r.exit_code == 2 and "64x48 frames needs about" in " ".join(r.output.split())
    r = run(src, "--out", tmp_path / "o.mp4", "--device", "cpu", "--method", "diffusion")
    assert r.exit_code == 2 and "F_i on 64x48 frames" in " ".join(r.output.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


def test_diffusion_interpolation_too_large_for_memory_names_the_chunk_that_fits():
    from mavcli.errors import UserInputError
    from mavcli.pipeline import MakeAVideoPipeline as P

    gib = 2**30
    P.check_interpolate_memory(455, 256, 300, 2, 9, available=3 * gib)  # ~2.4 GiB: fits
    with pytest.raises(UserInputError, match=r"1920x1080 frames, 9 input frames at a time, needs about 31\.\d GiB") as e:
        P.check_interpolate_memory(1920, 1080, 300, 2, 9, available=16 * gib)
    most = int(str(e.value).split("--chunk ")[1].split()[0])
    assert 3 <= most < 9
    P.check_interpolate_memory(1920, 1080, 300, 2, most, available=16 * gib)  # the chunk it names fits
    with pytest.raises(UserInputError, match="even --chunk 3 does not fit"):
        P.check_interpolate_memory(3840, 2160, 300, 2, 9, available=8 * gib)
    P.check_interpolate_memory(1920, 1080, 4, 2, 9, available=16 * gib)  # a 4-frame clip holds only 4
