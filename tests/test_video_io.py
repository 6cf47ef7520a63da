"""common/video_io.py: mp4 round trips (near-lossless mode within 2 levels), atomic writes, readable errors, and the
check of a finished-looking video (decodes fully, frame count, size)."""

import numpy as np
import pytest
import torch

from common import video_io
from common.video_io import VideoDecodeError, read_video, verify_video, video_to_uint8_frames, write_video


def frames(t: int = 5, h: int = 32, w: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def test_near_lossless_round_trip_is_within_two_levels(tmp_path):
    original = frames()
    path = write_video(tmp_path / "clip.mp4", original, fps=8, quality=None)
    decoded = read_video(path)
    assert decoded.shape == original.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - original.astype(int)).max() <= 2


def test_default_quality_keeps_the_shape(tmp_path):
    original = frames(t=3, h=16, w=24)
    assert read_video(write_video(tmp_path / "clip.mp4", original)).shape == original.shape


def test_interrupted_write_leaves_no_file_under_the_target_name(tmp_path, monkeypatch):
    target = tmp_path / "clip.mp4"
    first = frames(seed=1)
    write_video(target, first, quality=None)
    before = read_video(target)
    real_get_writer = video_io.imageio.get_writer

    class FailingWriter:
        """The real writer, failing at the second frame as a killed job would."""

        def __init__(self, *args, **kwargs):
            self.writer = real_get_writer(*args, **kwargs)
            self.count = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.writer.close()

        def append_data(self, frame):
            self.count += 1
            if self.count == 2:
                raise RuntimeError("interrupted")
            self.writer.append_data(frame)

    monkeypatch.setattr(video_io.imageio, "get_writer", FailingWriter)
    with pytest.raises(RuntimeError, match="interrupted"):
        write_video(target, frames(seed=2), quality=None)
    with pytest.raises(RuntimeError, match="interrupted"):
        write_video(tmp_path / "new.mp4", frames(seed=2), quality=None)
    # The finished video is untouched, no truncated video took a real name, and the temporaries are removed.
    assert np.array_equal(read_video(target), before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_a_name_of_250_bytes_is_written(tmp_path):
    """The temporary name is short whatever the final one: ".{stem}.partial.mp4" was 9 bytes longer, so a 250-byte
    VBench name passed the 255-byte check and failed with "File name too long" after the whole video was made."""
    name = "é" * 123 + "-0.mp4"  # 246 + 6 = 252 bytes
    assert len(name.encode()) == 252
    original = frames(t=2, h=16, w=16)
    path = write_video(tmp_path / name, original, quality=None)
    assert np.abs(read_video(path).astype(int) - original.astype(int)).max() <= 2
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_missing_file_and_bad_frames_are_readable_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="video not found"):
        read_video(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        write_video(tmp_path / "bad.mp4", frames().astype(np.float32))
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        write_video(tmp_path / "bad.mp4", frames()[..., :1])


def test_a_file_that_does_not_decode_is_one_line_naming_it(tmp_path):
    """imageio appends ffmpeg's whole log to its error; the message keeps its first line and names the file."""
    good = write_video(tmp_path / "good.mp4", frames(), quality=None).read_bytes()
    for name, content in (("cut.mp4", good[: len(good) // 2]), ("text.mp4", b"not a video"), ("empty.mp4", b"")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(VideoDecodeError) as info:
            read_video(tmp_path / name)
        assert str(info.value).startswith(f"video {tmp_path / name} does not decode (")
        assert "\n" not in str(info.value) and "ffmpeg version" not in str(info.value)


def test_verify_video_checks_decoding_frame_count_and_size(tmp_path):
    original = frames(t=5, h=32, w=48)
    path = write_video(tmp_path / "clip.mp4", original)
    assert verify_video(path) is None and verify_video(path, 5, (48, 32)) is None
    assert verify_video(path, 4, (48, 32)) == "has 5 frames, expected 4"
    assert verify_video(path, 5, (32, 48)) == "is 48x32, expected 32x48"
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[:200])
    assert verify_video(cut, 5, (48, 32)).startswith("does not decode (")
    assert verify_video(tmp_path / "missing.mp4").startswith("cannot be read (video not found")


def test_video_to_uint8_frames_maps_minus_one_to_one_onto_0_to_255():
    video = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).view(1, 5, 1, 1).expand(3, 5, 2, 2)  # (C, T, H, W)
    out = video_to_uint8_frames(video)
    assert out.shape == (5, 2, 2, 3) and out.dtype == np.uint8
    assert out[:, 0, 0, 0].tolist() == [0, 0, 128, 255, 255]
    with pytest.raises(ValueError, match=r"\(C, T, H, W\)"):
        video_to_uint8_frames(torch.zeros(3, 2, 2))
