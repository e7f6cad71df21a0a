"""Video decoding: sampling policies, timestamps, seeking, rotation and clear errors."""

import json

import av
import numpy as np
import pytest

from helpers import FIXTURES, PE_FIXTURES, make_video, pe_reference, set_mp4_rotation
from sensorium.errors import MediaError
from sensorium.media import EveryFrame, FixedRate, Uniform, VideoReader, read_video

DOG = FIXTURES / "media" / "dog.mp4"


def _levels(clip):
    return [round(float(f.mean()) / 8) for f in clip.frames]


def test_fixture_frames_match_the_original_decode():
    meta = json.loads((PE_FIXTURES / "clip_tiny" / "reference.json").read_text())["meta"]["video"]
    clip = read_video(DOG, Uniform(meta["num_frames"]))
    assert clip.total_frames == meta["total_frames"] and clip.indices == meta["indices"]
    means = pe_reference("clip_tiny")["video_frame_mean_rgb_uint8"].numpy()
    np.testing.assert_allclose(clip.frames.reshape(len(clip.frames), -1, 3).mean(axis=1), means, rtol=0, atol=1e-4)
    assert clip.timestamps == pytest.approx([i / 30 for i in meta["indices"]])
    assert clip.duration == pytest.approx(5.0)


@pytest.mark.parametrize("codec,ext", [("mpeg4", "mp4"), ("libx264", "mkv"), ("libvpx-vp9", "webm")])
def test_sampled_frames_equal_a_full_decode(tmp_path, codec, ext):
    path = make_video(tmp_path / f"v.{ext}", num_frames=31, codec=codec, gop=4)
    with av.open(str(path)) as container:
        everything = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    for sampling in (Uniform(8), Uniform(1), EveryFrame(), FixedRate(3.0), Uniform(40)):
        clip = read_video(path, sampling)
        for index, frame in zip(clip.indices, clip.frames):
            assert np.array_equal(frame, everything[index])
    assert read_video(path, Uniform(8)).indices == [int(i * 30 / 7) for i in range(8)]
    assert read_video(path, Uniform(1)).indices == [15]
    assert read_video(path, EveryFrame()).indices == list(range(31))


def test_fixed_rate_timestamps(tmp_path):
    path = make_video(tmp_path / "ten.mp4", num_frames=30, fps=10)
    clip = read_video(path, FixedRate(2.0))
    assert clip.indices == [0, 5, 10, 15, 20, 25]
    assert clip.timestamps == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    assert _levels(clip) == clip.indices


def test_variable_frame_rate_uses_real_timestamps(tmp_path):
    pts = [0, 40, 80, 500, 520, 2000, 2040, 2080]
    path = make_video(tmp_path / "vfr.mkv", num_frames=len(pts), codec="libx264", pts_ms=pts, gop=2)
    clip = read_video(path, EveryFrame())
    assert clip.timestamps == pytest.approx([p / 1000 for p in pts], abs=1e-3)
    one_per_second = read_video(path, FixedRate(1.0))
    # the frame on screen at t = 0, 1, 2 s
    assert one_per_second.indices == [0, 4, 5]
    assert one_per_second.timestamps == pytest.approx([0.0, 0.52, 2.0], abs=1e-3)


def test_rotation_metadata_is_applied(tmp_path):
    path = tmp_path / "portrait.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        for _ in range(3):
            array = np.zeros((32, 64, 3), np.uint8)
            array[:, :16] = 255  # white band on the left of the stored frame
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    set_mp4_rotation(path, 90)
    clip = read_video(path, Uniform(1))
    frame = clip.frames[0]
    assert frame.shape[:2] == (64, 32)
    assert clip.rotation in (90, -90)
    assert frame[:16].mean() > 200 and frame[32:].mean() < 50  # turned clockwise: the band is on top


def test_audio_only_file_has_no_video_stream():
    with pytest.raises(MediaError, match="train.mp3: no video stream"):
        read_video(FIXTURES / "media" / "train.mp3")


def test_corrupt_and_not_media():
    with pytest.raises(MediaError, match="corrupt.mp4: not a readable media file"):
        read_video(FIXTURES / "media" / "corrupt.mp4")
    with pytest.raises(MediaError, match="notmedia.mp3: not a readable media file"):
        read_video(FIXTURES / "media" / "notmedia.mp3")


def test_truncated_video(tmp_path):
    source = make_video(tmp_path / "full.mp4", num_frames=60, gop=10)
    fast = tmp_path / "fast.mp4"
    with av.open(str(source)) as src, av.open(str(fast), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    data = fast.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(MediaError, match="cut.mp4: truncated video: the container lists 60 frames"):
        read_video(cut)
    half = tmp_path / "half.mp4"
    half.write_bytes(source.read_bytes()[: len(source.read_bytes()) // 2])  # index at the end: lost
    with pytest.raises(MediaError, match="half.mp4: not a readable media file"):
        read_video(half)


def test_video_stream_without_frames(tmp_path):
    path = tmp_path / "empty.mkv"
    out = av.open(str(path), "w")
    stream = out.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    out.start_encoding()
    out.close()
    assert path.stat().st_size > 0
    with pytest.raises(MediaError, match="empty.mkv: .*(no frames|not a readable)"):
        read_video(path)


def test_missing_empty_and_too_many_frames(tmp_path):
    with pytest.raises(MediaError, match="no such file"):
        read_video(tmp_path / "absent.mp4")
    (tmp_path / "zero.mp4").write_bytes(b"")
    with pytest.raises(MediaError, match="empty file"):
        read_video(tmp_path / "zero.mp4")
    with pytest.raises(MediaError, match="max_frames"):
        read_video(DOG, EveryFrame(), max_frames=100)


def test_reader_streams_frames_without_holding_them(tmp_path):
    path = make_video(tmp_path / "long.mp4", num_frames=90, gop=15)
    with VideoReader(path) as video:
        assert video.total_frames == 90
        indices = video.sample(FixedRate(1.0))
        levels = [round(float(rgb.mean()) / 8) for _, _, rgb in video.frames(indices)]
    assert indices == [0, 10, 20, 30, 40, 50, 60, 70, 80]
    assert levels == [i % 32 for i in indices]  # frame i has grey level 8*i mod 256


def test_duplicate_timestamps_fall_back_to_decoding_order(tmp_path):
    """A stream whose packets repeat timestamps: frames are counted and addressed in decoding order."""
    path = tmp_path / "dup.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        packets = []
        for i in range(12):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 16 * i, np.uint8), format="rgb24")
            packets += stream.encode(frame)
        packets += stream.encode()
        for packet in packets:
            if packet.pts is not None:
                packet.pts = packet.dts = packet.pts // 2  # pairs of frames share a time
            out.mux(packet)
    with av.open(str(path)) as container:
        everything = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    clip = read_video(path, Uniform(4))
    assert clip.total_frames == len(everything)
    for index, frame in zip(clip.indices, clip.frames):
        assert np.array_equal(frame, everything[index])
