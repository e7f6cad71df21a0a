"""Hostile and damaged media: many channels, non-finite or absurd samples, truncated files of every container,
and files that cannot be read (FIFOs, devices, permissions). Every input is made at test time."""

import json
import os
import stat
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile

import media_makers as make
from sensorium.errors import MediaError, TruncatedMediaWarning
from sensorium.media.audio import MAX_AMPLITUDE, load_audio, stream_audio
from sensorium.media.video import EveryFrame, Uniform, VideoReader, read_video

TESTS = Path(__file__).parent
FIXTURES = TESTS / "fixtures"  # (not from helpers, which imports torch: child processes start faster)


def _run_isolated(function: str, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    """One of this module's functions in a fresh interpreter: a crash inside FFmpeg/PyAV fails the test
    instead of killing pytest."""
    code = (f"import sys; sys.path[:0] = [{str(TESTS)!r}]; import test_media_faults as t; "
            f"t.{function}(*sys.argv[1:])")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def _assert_clean_exit(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit status {result.returncode}\n{result.stdout}\n{result.stderr[-3000:]}"


# ---------------------------------------------------------------------------------------------------------
# Many channels: the downmix must not crash (PyAV segfaulted on planar frames of 8+ channels)

CHANNEL_KINDS = {  # kind: (channel counts, sample rate)
    "wav_pcm16": (range(1, 25), 22050),
    "wav_float": (range(1, 25), 16000),
    "flac": (range(1, 9), 44100),
    "mkv_pcm_s16le": (range(1, 25), 48000),
    "mka_flac": (range(1, 9), 22050),
}


def _make_channels_file(kind: str, folder: Path, channels: int, rate: int) -> Path:
    seconds = 0.25
    if kind == "wav_pcm16":
        return make.write_soundfile(folder / f"{channels}.wav", seconds, rate, channels, "PCM_16")
    if kind == "wav_float":
        return make.write_soundfile(folder / f"{channels}f.wav", seconds, rate, channels, "FLOAT")
    if kind == "flac":
        return make.write_soundfile(folder / f"{channels}.flac", seconds, rate, channels, "PCM_24")
    if kind == "mkv_pcm_s16le":
        return make.encode_audio(folder / f"{channels}.mkv", "pcm_s16le", seconds, rate, channels)
    return make.encode_audio(folder / f"{channels}.mka", "flac", seconds, rate, channels)


def channel_count_failures(kind: str, folder: Path) -> list[str]:
    """Both downmix rules at every channel count of `kind`."""
    counts, rate = CHANNEL_KINDS[kind]
    failures = []
    for channels in counts:
        path = _make_channels_file(kind, folder, channels, rate)
        mean = load_audio(path, rate)
        if kind.startswith(("wav", "flac")):
            samples, _ = soundfile.read(path, dtype="float32", always_2d=True)
        else:  # what was encoded; FFmpeg stored it as 16-bit samples
            samples = make.signal(0.25, rate, channels)
        expected = samples.mean(axis=1, dtype=np.float32)
        # Summation order may differ from numpy's pairwise sum: equal to float32 rounding of the channel sum.
        tolerance = channels * np.finfo(np.float32).eps * float(np.abs(samples).max())
        if kind.startswith("mk"):
            tolerance = 1 / 32768  # the 16-bit quantisation of each channel
        if mean.shape != expected.shape or np.abs(mean - expected).max() > tolerance:
            failures.append(f"{channels} channels: mean differs by {np.abs(mean - expected).max()}")
        for downmix in ("mean", "ffmpeg"):
            resampled = load_audio(path, 8000, downmix=downmix)
            if abs(len(resampled) - 2000) > 1 or not np.isfinite(resampled).all() or not resampled.any():
                failures.append(f"{channels} channels, {downmix} at 8 kHz: {len(resampled)} samples")
    return failures


def exact_mean_failures(folder: Path) -> list[str]:
    """Integer PCM (any channel count) and float with fewer than 8 channels give numpy's channel mean of
    soundfile's samples bit for bit."""
    failures = []
    for channels, subtype in ((2, "FLOAT"), (6, "FLOAT"), (7, "PCM_24"), (12, "PCM_16"), (24, "PCM_16")):
        path = make.write_soundfile(folder / f"{channels}.wav", 0.2, 44100, channels, subtype)
        samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
        if not np.array_equal(load_audio(path, rate), samples.mean(axis=1, dtype=np.float32)):
            failures.append(f"{channels} channels {subtype}: not numpy's mean")
    return failures


def named_layout_failures(folder: Path) -> list[str]:
    """5.1, 7.1 and 22.2 have FFmpeg downmix matrices, which weight the channels unequally (unlike the mean)."""
    failures = []
    for layout in ("5.1", "7.1", "22.2"):
        path = make.encode_audio(folder / f"{layout}.mkv", "pcm_s16le", 0.25, 48000, layout)
        ffmpeg, mean = load_audio(path, 48000, downmix="ffmpeg"), load_audio(path, 48000)
        if not (len(ffmpeg) == len(mean) == 12000 and not np.allclose(ffmpeg, mean, atol=1e-3)):
            failures.append(f"{layout}: the ffmpeg downmix is not FFmpeg's matrix")
    return failures


DOWNMIX_CHECKS = {**{kind: (lambda f, k=kind: channel_count_failures(k, f)) for kind in CHANNEL_KINDS},
                  "exact means": exact_mean_failures, "named layouts": named_layout_failures}


def check_downmixes(folder: str) -> None:
    """(Runs in a child process.) Every downmix check, one JSON line each as it finishes, so that a crash
    names the check it happened in and leaves the others' results."""
    for name, check in DOWNMIX_CHECKS.items():
        (Path(folder) / name).mkdir()
        print(json.dumps({"check": name, "failures": check(Path(folder) / name)}), flush=True)


@pytest.fixture(scope="module")
def downmix_results(tmp_path_factory) -> tuple[dict, subprocess.CompletedProcess]:
    """One interpreter for all downmix checks (a fresh one costs seconds: the package imports torch)."""
    result = _run_isolated("check_downmixes", tmp_path_factory.mktemp("channels"))
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {line["check"]: line["failures"] for line in lines}, result


@pytest.mark.parametrize("check", sorted(DOWNMIX_CHECKS))
def test_downmix_of_any_channel_count(downmix_results, check):
    results, child = downmix_results
    assert check in results, (f"the child process ended (exit status {child.returncode}) before finishing "
                              f"{check!r}\n{child.stderr[-3000:]}")
    assert results[check] == []


# ---------------------------------------------------------------------------------------------------------
# Non-finite and absurd samples


def _float_wav(path, value, at_seconds=12.34, rate=16000, seconds=20.0):
    wave = make.signal(seconds, rate, 2)
    wave[round(at_seconds * rate), :] = value
    soundfile.write(path, wave, rate, subtype="FLOAT")
    return path


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("rate,downmix", [(16000, "mean"), (22050, "mean"), (8000, "ffmpeg")])
def test_non_finite_samples_are_refused_with_their_time(tmp_path, value, rate, downmix):
    path = _float_wav(tmp_path / "bad.wav", value)
    with pytest.raises(MediaError, match=r"bad.wav: audio contains NaN or infinite samples \(first at 12.3[34] s\)"):
        load_audio(path, rate, downmix=downmix)


def test_the_check_is_per_block(tmp_path):
    """Blocks before the bad sample come out; the error is raised at the block that holds it."""
    path = _float_wav(tmp_path / "late.wav", np.nan, at_seconds=15.0)
    blocks = []
    with pytest.raises(MediaError, match="first at 15.00 s"):
        for block in stream_audio(path, 16000):
            blocks.append(block)
    assert 14.0 < sum(map(len, blocks)) / 16000 <= 15.0


@pytest.mark.parametrize("peak", [3e9, -1.5e12])
def test_absurd_amplitudes_are_refused(tmp_path, peak):
    path = _float_wav(tmp_path / "loud.wav", peak)
    with pytest.raises(MediaError, match=r"audio samples reach .*beyond the 1e\+08 limit.*float audio is expected "
                                         r"in \[-1, 1\]"):
        load_audio(path, 16000)


@pytest.mark.parametrize("peak", [32768.0, -32768.0, 8.4e6, -8.4e6])
def test_int_scaled_float_audio_passes(tmp_path, peak):
    path = _float_wav(tmp_path / "scaled.wav", peak, seconds=2.0, at_seconds=1.0)
    for downmix in ("mean", "ffmpeg"):
        assert np.abs(load_audio(path, 16000, downmix=downmix)).max() > abs(peak) / 4


def test_arrays_are_checked_too():
    wave = make.signal(2.0, 16000, 2).T.copy()
    assert MAX_AMPLITUDE == 1e8
    for value, reason in ((np.nan, "NaN or infinite samples"), (np.inf, "NaN or infinite"), (2e8, "reach")):
        bad = wave.copy()
        bad[:, 16000] = value
        with pytest.raises(MediaError, match=reason):
            load_audio(bad, 16000, source_rate=16000)
    wave[:, 100] = 8.4e6
    assert len(load_audio(wave, 8000, source_rate=16000)) == 16000


# ---------------------------------------------------------------------------------------------------------
# Truncation: complete files must pass (no false positives), cut files must not


def _complete_files(folder: Path) -> dict[str, Path]:
    """Complete files of every kind this library reads, made by libsndfile and FFmpeg."""
    f = folder
    audio = {
        "pcm16_44100.wav": lambda p: make.write_soundfile(p, 0.3, 44100, 2, "PCM_16"),
        "float_22050_60s.wav": lambda p: make.write_soundfile(p, 60, 22050, 1, "FLOAT"),
        "pcm24_8000.wav": lambda p: make.write_soundfile(p, 0.3, 8000, 1, "PCM_24"),
        "sf_22050.flac": lambda p: make.write_soundfile(p, 0.3, 22050, 2),
        "sf_8000_60s.flac": lambda p: make.write_soundfile(p, 60, 8000, 1),
        "ffmpeg_44100.flac": lambda p: make.encode_audio(p, "flac", 3, 44100, 2),
        "cbr_44100.mp3": lambda p: make.encode_audio(p, "libmp3lame", 0.3, 44100, 2, bit_rate=128000),
        "cbr_noxing_22050_60s.mp3": lambda p: make.encode_audio(p, "libmp3lame", 60, 22050, 1, bit_rate=32000,
                                                                 container_options={"write_xing": "0"}),
        "vbr_22050_60s.mp3": lambda p: make.encode_audio(p, "libmp3lame", 60, 22050, 1, vbr_quality=4),
        "vbr_noxing_8000.mp3": lambda p: make.encode_audio(p, "libmp3lame", 0.3, 8000, 1, vbr_quality=4,
                                                            container_options={"write_xing": "0"}),
        "cbr_8000.mp3": lambda p: make.encode_audio(p, "libmp3lame", 3, 8000, 1, bit_rate=16000),
        "sf_vorbis_44100.ogg": lambda p: make.write_soundfile(p, 0.3, 44100, 2),
        "sf_vorbis_8000_60s.ogg": lambda p: make.write_soundfile(p, 60, 8000, 1),
        "ffmpeg_vorbis_22050.ogg": lambda p: make.encode_audio(p, "vorbis", 3, 22050, 2),
        "opus_48000.opus": lambda p: make.encode_audio(p, "libopus", 0.3, 48000, 2),
        "opus_8000_60s.opus": lambda p: make.encode_audio(p, "libopus", 60, 8000, 1),
        "aac_44100.m4a": lambda p: make.encode_audio(p, "aac", 0.3, 44100, 2),
        "aac_8000_60s.m4a": lambda p: make.encode_audio(p, "aac", 60, 8000, 1),
        "aac_faststart_22050.m4a": lambda p: make.encode_audio(p, "aac", 3, 22050, 2,
                                                                container_options={"movflags": "faststart"}),
        "aac_8000_60s.mka": lambda p: make.encode_audio(p, "aac", 60, 8000, 1),  # the largest priming measured
        "flac_22050.mka": lambda p: make.encode_audio(p, "flac", 0.3, 22050, 2),
        "pcm_44100.mka": lambda p: make.encode_audio(p, "pcm_s16le", 0.3, 44100, 2),  # 24 channels: see above
        "opus_48000.webm": lambda p: make.encode_audio(p, "libopus", 3, 48000, 1),
        "live_aac.mka": lambda p: make.encode_audio(p, "aac", 7, 44100, 2, seekable=False),  # no sizes, no duration
    }
    video = {
        "h264.mkv": lambda p: make.encode_video(p, 0.3, 25),
        "h264_60s.mkv": lambda p: make.encode_video(p, 60, 25),
        "vp9.webm": lambda p: make.encode_video(p, 0.3, 25, codec="libvpx-vp9"),
        "h264.mp4": lambda p: make.encode_video(p, 0.3, 25),
        "mpeg4.mov": lambda p: make.encode_video(p, 3, 30, codec="mpeg4"),
        "h264_aac.mkv": lambda p: make.encode_video(p, 0.3, 25, audio_codec="aac"),
        "vp8_opus.webm": lambda p: make.encode_video(p, 3, 30, codec="libvpx", audio_codec="libopus"),
        "h264_aac_60s.mp4": lambda p: make.encode_video(p, 60, 25, audio_codec="aac", audio_rate=22050,
                                                        audio_channels=1),
        "h264_aac_2997.mov": lambda p: make.encode_video(p, 0.3, 29.97, audio_codec="aac"),
        "h264_aac_faststart.mp4": lambda p: make.encode_video(p, 3, 24, audio_codec="aac",
                                                               container_options={"movflags": "faststart"}),
        "longer_audio.mkv": lambda p: make.encode_video(p, 2, 25, audio_codec="aac", audio_seconds=4),
        "live_h264_aac.mkv": lambda p: make.encode_video(p, 3, 25, audio_codec="aac", seekable=False),
    }
    vfr = [0, 40, 80, 500, 520, 2000, 2040, 2080]
    video.update({f"vfr.{ext}": (lambda p, c=codec: make.encode_video(p, 2.1, 25, codec=c, pts_ms=vfr))
                  for ext, codec in (("mkv", "libx264"), ("mp4", "libx264"), ("webm", "libvpx-vp9"))})
    return {name: maker(f / name) for name, maker in {**audio, **video}.items()}


@pytest.fixture(scope="module")
def complete(tmp_path_factory) -> dict[str, Path]:
    return _complete_files(tmp_path_factory.mktemp("complete"))


def _streams(path: Path) -> tuple[bool, bool]:
    import av

    with av.open(str(path)) as container:
        return bool(container.streams.audio), bool(container.streams.video)


def test_every_complete_file_passes(complete):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a TruncatedMediaWarning would be a false positive too
        for name, path in complete.items():
            has_audio, has_video = _streams(path)
            if has_audio:
                assert len(load_audio(path, 16000)) > 0, name
            if has_video:
                with VideoReader(path) as video:
                    assert video.total_frames > 0, name
    assert len(complete) == 39


def test_the_repository_media_still_decode():
    media = FIXTURES / "media"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("speech.wav", "stereo_44k.wav", "tone_8k.wav", "silence.wav", "train.flac", "train.mp3",
                     "train.ogg", "train.mp4"):
            assert len(load_audio(media / name, 16000)) > 0, name
        for name in ("dog.mp4", "train.mp4"):
            assert read_video(media / name, Uniform(8)).frames.shape[0] == 8


CUTS = (0.1, 0.5, 0.9, 0.99, -3)  # fractions of the bytes kept, or bytes short of the end

TRUNCATION_CASES = {  # file -> streams read from it
    "pcm16_44100.wav": ("audio",), "sf_22050.flac": ("audio",), "ffmpeg_44100.flac": ("audio",),
    "cbr_8000.mp3": ("audio",), "vbr_22050_60s.mp3": ("audio",), "cbr_noxing_22050_60s.mp3": ("audio",),
    "sf_vorbis_44100.ogg": ("audio",), "ffmpeg_vorbis_22050.ogg": ("audio",), "opus_8000_60s.opus": ("audio",),
    "aac_faststart_22050.m4a": ("audio",), "aac_8000_60s.m4a": ("audio",), "flac_22050.mka": ("audio",),
    "opus_48000.webm": ("audio",), "h264_60s.mkv": ("video",), "vp9.webm": ("video",), "mpeg4.mov": ("video",),
    "h264_aac.mkv": ("audio", "video"), "vp8_opus.webm": ("audio", "video"),
    "h264_aac_faststart.mp4": ("audio", "video"), "h264_aac_60s.mp4": ("audio", "video"),
    "live_aac.mka": ("audio",), "live_h264_aac.mkv": ("audio", "video"),
}


def _cut(source: Path, folder: Path, keep: float) -> Path:
    data = source.read_bytes()
    size = int(len(data) * keep) if keep > 0 else len(data) + int(keep)
    if source.suffix == ".mp3" and "noxing" in source.name and data[size] == 0xFF and data[size + 1] >= 0xE0:
        size += 1  # between two frames a Xing-less MP3 is a valid shorter MP3: cut inside one
    cut = folder / f"cut{keep}-{source.name}"
    cut.write_bytes(data[:size])
    return cut


def _read(kind: str, path: Path, on_truncated: str):
    if kind == "audio":
        return len(load_audio(path, 16000, on_truncated=on_truncated)) / 16000
    return read_video(path, Uniform(8), on_truncated=on_truncated).duration  # the last frame is the cut one


@pytest.mark.parametrize("name", sorted(TRUNCATION_CASES))
def test_truncated_files_are_never_complete(complete, tmp_path, name):
    for keep in CUTS:
        cut = _cut(complete[name], tmp_path, keep)
        for kind in TRUNCATION_CASES[name]:
            with pytest.raises(MediaError) as error:
                _read(kind, cut, "error")
            # A file cut too short for FFmpeg to open is "not a readable media file" (plus the truncation
            # where the container's structure shows it); anything that opens is named truncated.
            assert "truncated" in str(error.value) or "not a readable" in str(error.value), (keep, str(error.value))
            _check_warn_mode(kind, cut, keep)


def _check_warn_mode(kind: str, cut: Path, keep: float) -> None:
    """With on_truncated="warn": the readable part and a warning that says how much it is, or (nothing
    readable) the same MediaError."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            seconds = _read(kind, cut, "warn")
        except MediaError:
            assert not caught
            return
    messages = [str(w.message) for w in caught if issubclass(w.category, TruncatedMediaWarning)]
    assert len(messages) == 1 and messages[0].startswith(f"{cut}: truncated {kind}: read "), (keep, messages)
    assert seconds > 0


def test_messages_state_declared_and_read_durations(complete, tmp_path):
    cut = _cut(complete["h264_60s.mkv"], tmp_path, 0.5)
    with pytest.raises(MediaError, match=r"truncated video: the file ends \d+ bytes before its Matroska segment "
                                         r"does; the container declares 60.00 s, only [1-5]\d.\d\d s could be read"):
        VideoReader(cut)
    with pytest.warns(TruncatedMediaWarning, match=r"truncated video: read [1-5]\d.\d\d s of the 60.00 s declared"):
        clip = read_video(cut, EveryFrame(), on_truncated="warn")
    assert 10 < clip.duration < 59 and clip.frames.shape[0] == clip.total_frames
    cut = _cut(complete["aac_8000_60s.mka"], tmp_path, 0.99)
    with pytest.warns(TruncatedMediaWarning, match=r"truncated audio: read 59.\d\d s of the 60.1\d s declared"):
        assert 59 < len(load_audio(cut, 8000, on_truncated="warn")) / 8000 < 60


def test_live_written_matroska_is_judged_by_ffmpeg_itself(complete, tmp_path):
    """Written forwards only, a Matroska file declares neither its size nor its duration: FFmpeg's demuxer
    reports the cut ("File ended prematurely") and that report is taken as the evidence."""
    cut = _cut(complete["live_aac.mka"], tmp_path, 0.5)
    with pytest.raises(MediaError, match=r"truncated audio: FFmpeg's matroska,webm demuxer: File ended "
                                         r"prematurely; only 3.\d\d s could be read"):
        load_audio(cut, 16000)
    with pytest.warns(TruncatedMediaWarning, match=r"read 3.\d\d s \(the container does not declare its duration\)"):
        load_audio(cut, 16000, on_truncated="warn")


def test_long_flac_missing_a_few_percent(tmp_path):
    """20 minutes declared, 96 s missing (8 %): the old 10 % allowance let this pass."""
    path = tmp_path / "long.flac"
    rate = 8000
    soundfile.write(path, (0.3 * np.sin(np.arange(20 * 60 * rate) * 0.05)).astype(np.float32), rate,
                    subtype="PCM_16")
    data = path.read_bytes()
    cut = tmp_path / "cut.flac"
    cut.write_bytes(data[: int(len(data) * 1104 / 1200)])
    with pytest.raises(MediaError, match=r"cut.flac: truncated audio: the FLAC header declares 9600000 samples, "
                                         r"\d+ could be decoded; the container declares 1200.00 s, only 110\d.\d\d s"):
        load_audio(cut, rate)
    with pytest.warns(TruncatedMediaWarning, match=r"read 110\d.\d\d s of the 1200.00 s declared"):
        assert abs(len(load_audio(cut, rate, on_truncated="warn")) / rate - 1104) < 2
    assert len(load_audio(path, rate)) == 9600000


def test_on_truncated_is_checked(complete):
    with pytest.raises(ValueError, match="on_truncated"):
        load_audio(complete["sf_22050.flac"], 16000, on_truncated="ignore")
    with pytest.raises(ValueError, match="on_truncated"):
        VideoReader(complete["h264.mkv"], on_truncated="skip")


# ---------------------------------------------------------------------------------------------------------
# Inputs that are not readable files: the true reason


def test_fifo_and_device_are_not_empty_files(tmp_path):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    for read in (lambda p: load_audio(p, 16000), VideoReader):
        with pytest.raises(MediaError, match=r"pipe.wav: a FIFO \(named pipe\), not a regular file"):
            read(fifo)
        with pytest.raises(MediaError, match="/dev/zero: a character device, not a regular file"):
            read("/dev/zero")


def check_permissions(folder: str, drop: str) -> None:
    """(Runs in a child process.) Everything is imported first; then, when `drop` is "1", the process becomes
    nobody (65534): the interpreter itself may live where nobody can read, and root ignores file modes."""
    if drop == "1":
        # PyAV imports some of its modules on first use (av.subtitles when a container opens): use them while
        # still root, or a checkout nobody can read (a private temporary folder) fails on the import instead
        load_audio(Path(folder) / "open.wav", 16000)
        VideoReader(Path(folder) / "closed.mkv")
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    folder = Path(folder)
    assert len(load_audio(folder / "open.wav", 16000)) == 1600  # the folder is reachable: the reasons are true
    reasons = {}
    for name in ("closed.wav", "locked/inside.wav", "closed.mkv", "locked/inside.mkv"):
        read = VideoReader if name.endswith(".mkv") else (lambda p: load_audio(p, 16000))
        try:
            read(folder / name)
            reasons[name] = "read"
        except MediaError as err:
            reasons[name] = err.reason
    print(json.dumps(reasons))


def test_permission_denied_is_said(complete):
    folder = Path(tempfile.mkdtemp(prefix="sensorium-perm-"))
    try:
        folder.chmod(0o755)
        make.write_soundfile(folder / "open.wav", 0.1, 16000, 1, "PCM_16")
        (folder / "open.wav").chmod(0o644)
        (folder / "locked").mkdir()
        for name, source in (("closed.wav", folder / "open.wav"), ("closed.mkv", complete["h264.mkv"])):
            for target in (folder / name, folder / "locked" / name.replace("closed", "inside")):
                target.write_bytes(source.read_bytes())
                target.chmod(0)
        (folder / "locked").chmod(0)
        result = _run_isolated("check_permissions", folder, "1" if os.geteuid() == 0 else "0")
        _assert_clean_exit(result)
        reasons = json.loads(result.stdout.strip().splitlines()[-1])
        assert reasons == {
            "closed.wav": "permission denied (the file is not readable)",
            "closed.mkv": "permission denied (the file is not readable)",
            "locked/inside.wav": "permission denied (a folder on its path cannot be searched)",
            "locked/inside.mkv": "permission denied (a folder on its path cannot be searched)",
        }
    finally:
        (folder / "locked").chmod(stat.S_IRWXU)
        subprocess.run(["rm", "-rf", str(folder)], check=False)
