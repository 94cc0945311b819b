"""Decoding real and self-encoded clips from bytes: counts, shapes, frame identity, seeking."""

from __future__ import annotations

import pytest
import torch

from mvclip.datamodules.decode import DecodeError, VideoReader, decode_frames, default_thread_count, probe

from loader_fixtures import encode_clip, pattern_frame, real_videos

CODECS = [
    ("libx264", "mp4", 4),  # H.264, short GOP
    ("libvpx-vp9", "webm", 6),  # VP9 in WebM (header says frames=0)
    ("libx265", "mkv", 5),  # HEVC in Matroska (header says frames=0)
    ("mpeg4", "avi", 5),  # MPEG-4 part 2 in AVI
]
N, W, H = 30, 96, 64


@pytest.fixture(scope="module", params=CODECS, ids=[f"{c}-{m}" for c, m, _ in CODECS])
def encoded(request: pytest.FixtureRequest) -> bytes:
    codec, container, gop = request.param
    return encode_clip(codec, container, frames=N, width=W, height=H, fps=12, gop=gop)


def _nearest_pattern(frames: torch.Tensor) -> list[int]:
    """Which pattern frame each decoded frame is closest to (identifies frames despite coding loss)."""
    refs = torch.stack([torch.from_numpy(pattern_frame(i, W, H)).float() for i in range(N)])
    err = (frames.float()[:, None] - refs[None]).abs().mean(dim=(2, 3, 4))
    return err.argmin(dim=1).tolist()


def test_self_encoded_frame_count_shape_and_identity(encoded: bytes) -> None:
    info = probe(encoded)
    assert info.num_frames == N
    assert info.fps == pytest.approx(12.0)
    assert (info.width, info.height) == (W, H)
    idx = [0, 5, 11, 17, 23, 29]
    out = decode_frames(encoded, idx)
    assert out.dtype == torch.uint8 and out.shape == (len(idx), H, W, 3)
    assert _nearest_pattern(out) == idx
    tchw = decode_frames(encoded, idx, layout="tchw")
    assert tchw.shape == (len(idx), 3, H, W)
    assert torch.equal(tchw.permute(0, 2, 3, 1), out)


def test_seeking_equals_decoding_straight_through(encoded: bytes) -> None:
    reader = VideoReader(encoded)
    assert len(reader.info.keyframes) > 1  # short GOP: seeking actually happens
    idx = [1, 7, 13, 14, 22, 28]
    assert len(reader._plan(idx, "seek")) > 1
    seek = reader.frames(idx, strategy="seek")
    straight = reader.frames(idx, strategy="sequential")
    auto = reader.frames(idx, strategy="auto")
    assert torch.equal(seek, straight)
    assert torch.equal(auto, straight)
    reader.close()


def test_resize_short_side_and_repeats(encoded: bytes) -> None:
    out = decode_frames(encoded, [3, 3, 3, 10], short_side=32)
    assert out.shape == (4, 32, 48, 3)  # 96x64 -> 48x32
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_decodes_only_up_to_the_last_needed_frame() -> None:
    data = encode_clip("libx264", "mp4", frames=N, width=W, height=H, gop=4)
    reader = VideoReader(data)
    assert reader._plan([9, 10], "auto") == [(8, 10)]  # starts at the keyframe before 9, stops at 10
    long_gop = VideoReader(encode_clip("libx264", "mp4", frames=N, width=W, height=H, gop=None))
    assert long_gop.info.keyframes == [0]
    assert long_gop._plan([2, 15, 27], "auto") == [(0, 27)]  # one keyframe: straight through


@pytest.mark.skipif(not real_videos(), reason="real clips not found in ../shared/data/videos")
@pytest.mark.parametrize("path", real_videos(), ids=lambda p: p.name)
def test_real_clips(path) -> None:
    data = path.read_bytes()
    expected = {"bigbuckbunny.mp4": 132, "bikes.mp4": 250, "carphone_pristine.mp4": 120}
    reader = VideoReader(data, thread_count=default_thread_count(1))
    n = reader.info.num_frames
    if path.name in expected:
        assert n == expected[path.name]
    idx = [int((i + 0.5) * n / 8) for i in range(8)]
    out = reader.frames(idx, short_side=128)
    assert out.shape[0] == 8 and min(out.shape[1:3]) == 128 and out.shape[3] == 3
    assert out.float().std() > 5  # real pictures, not blank frames
    assert torch.equal(reader.frames(idx[:3], strategy="seek"), reader.frames(idx[:3], strategy="sequential"))
    reader.close()


@pytest.mark.parametrize(
    "data, reason",
    [(b"", "empty_video"), (b"\x00" * 1000, "undecodable"), (b"not a video at all" * 50, "undecodable")],
)
def test_broken_bytes_raise_decode_error_with_reason(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        decode_frames(data, [0])
    assert exc.value.reason == reason


def test_truncated_clip_raises_decode_error() -> None:
    data = encode_clip("libx264", "mp4", frames=N, width=W, height=H, gop=4)
    with pytest.raises(DecodeError):
        decode_frames(data[: len(data) // 2], [0, N - 1])


def test_out_of_range_indices() -> None:
    data = encode_clip("libx264", "mp4", frames=10, width=W, height=H)
    with pytest.raises(IndexError, match="outside"):
        decode_frames(data, [0, 10])


def test_default_thread_count_divides_cores() -> None:
    assert default_thread_count(1) >= 1
    assert default_thread_count(10_000) == 1
    assert default_thread_count(2) <= max(1, default_thread_count(1) // 2)


def test_single_threaded_scaling_gives_the_pixels_of_swscale_s_own_thread_choice(encoded: bytes) -> None:
    """Frames are scaled on the calling thread (swscale's per-frame thread pool was most of the decode time): the
    same pixels as PyAV's default `reformat`, at every size and without resizing."""
    import io

    import av

    def fresh(size):
        with av.open(io.BytesIO(encoded)) as container:
            frames = [f for _, f in zip(range(6), container.decode(video=0))]
        if size is None:
            return torch.stack([torch.from_numpy(f.to_ndarray(format="rgb24")) for f in frames])
        return torch.stack([torch.from_numpy(f.reformat(width=size[0], height=size[1], format="rgb24",
                                                         interpolation="BILINEAR").to_ndarray()) for f in frames])

    for short_side, size in [(32, (48, 32)), (None, None), (40, (60, 40)), (32, (48, 32))]:
        got = decode_frames(encoded, list(range(6)), short_side=short_side, layout="thwc")
        assert torch.equal(got, fresh(size)), (short_side, size)
