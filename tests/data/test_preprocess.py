"""Frame preprocessing equals the PIL/torchvision reference pipeline (METHOD.md section 1)."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import (
    CenterCrop,
    Compose,
    InterpolationMode,
    Normalize,
    Resize,
    ToTensor,
)
from torchvision.transforms.functional import crop as tv_crop

from fsar_cli.data.frames import (
    count_frames,
    iter_video_frames,
    read_frames,
    sample_indices,
    scan_video,
)
from fsar_cli.data.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    ViewSpec,
    crop_frames,
    crop_frames_hwc,
    crop_offset,
    load_views,
    normalize,
    plan_views,
    preprocess_frames,
    resize_frames,
    resize_frames_hwc,
    view_rng,
)
from fsar_cli.errors import DataError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import clip

# Tolerance against PIL: fsar resizes uint8 frames with torchvision's antialiased bicubic filter,
# a re-implementation of PIL's. Outputs differ by one grey level (1/255) at well under 1% of the
# values and by two at about 1 in 10^5, so the bound is 2 / (255 * min std) = 0.0301 in normalised
# units, mean < 1e-4. Measured on the fixtures: max 0.0150 (256x256 resize), 0.0300 (CLIP's
# transform, strong downscale), mean 2e-5 to 3e-5. (OpenCV's bicubic is off by up to 1.7.)
TOL_MAX = 2.0 / (255.0 * min(CLIP_STD)) + 1e-4
TOL_MEAN = 1e-4


def _reference(resize: int, crop: int) -> Compose:
    return Compose(
        [
            Resize((resize, resize), interpolation=InterpolationMode.BICUBIC),
            CenterCrop(crop),
            ToTensor(),
            Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )


@pytest.fixture(scope="module")
def frames(shared: Path) -> list[np.ndarray]:
    """Real frames of several sizes: 320x240, 340x256, 1280x720 videos, 256x256 SSv2 frames."""
    out: list[np.ndarray] = []
    for video in sorted((shared / "fixtures" / "videos").iterdir()):
        out += read_frames(video, [0, 17])
    folder = next((shared / "fixtures" / "ssv2_tiny" / "test" / "test0").iterdir())
    out += read_frames(folder, [0, 5])
    assert {f.shape[:2] for f in out} >= {(240, 320), (256, 340), (720, 1280), (256, 256)}
    return out


def _diff(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    d = (ours - ref).abs()
    return float(d.max()), float(d.mean())


def test_equals_pil_reference_pipeline(frames: list[np.ndarray]) -> None:
    ref = _reference(256, 224)
    ours = preprocess_frames(frames, 256, 224)  # one batch, mixed sizes
    assert ours.shape == (len(frames), 3, 224, 224) and ours.dtype == torch.float32
    theirs = torch.stack([ref(Image.fromarray(f)) for f in frames])
    mx, mean = _diff(ours, theirs)
    assert mx < TOL_MAX and mean < TOL_MEAN, (mx, mean)


def test_equals_clip_transform_on_square_input(frames: list[np.ndarray]) -> None:
    # CLIP's own pipeline resizes the short side to n, then centre-crops n: the same as METHOD's
    # resize-to-square-then-crop when resize == crop == n and the input is square.
    squares = [f[:, : f.shape[0]] for f in frames]
    ours = preprocess_frames(squares, 224, 224)
    theirs = torch.stack([clip.clip._transform(224)(Image.fromarray(f)) for f in squares])
    mx, mean = _diff(ours, theirs)
    assert mx < TOL_MAX and mean < TOL_MEAN, (mx, mean)


def test_random_crop_equals_reference_crop(frames: list[np.ndarray]) -> None:
    rng = np.random.default_rng(3)
    top, left = crop_offset(256, 224, "random", rng)
    assert 0 <= top <= 32 and 0 <= left <= 32
    resize = Resize((256, 256), interpolation=InterpolationMode.BICUBIC)
    norm = Normalize(CLIP_MEAN, CLIP_STD)
    theirs = torch.stack(
        [norm(ToTensor()(tv_crop(resize(Image.fromarray(f)), top, left, 224, 224))) for f in frames]
    )
    mx, mean = _diff(preprocess_frames(frames, 256, 224, (top, left)), theirs)
    assert mx < TOL_MAX and mean < TOL_MEAN, (mx, mean)


def test_centre_crop_offset_follows_torchvision() -> None:
    assert crop_offset(256, 224) == (16, 16)
    assert crop_offset(255, 224) == (16, 16)  # torchvision rounds (255 - 224) / 2 = 15.5 to 16
    assert crop_offset(224, 224) == (0, 0)
    with pytest.raises(DataError, match="larger than resize"):
        crop_offset(200, 224)
    with pytest.raises(DataError, match="rng"):
        crop_offset(256, 224, "random")


def test_batched_resize_equals_per_frame(frames: list[np.ndarray]) -> None:
    same = [f for f in frames if f.shape == frames[0].shape]
    assert len(same) >= 2
    batched = resize_frames(same, 256)
    single = torch.cat([resize_frames([f], 256) for f in same])
    assert batched.dtype == torch.uint8 and torch.equal(batched, single)
    square = frames[-1]
    assert torch.equal(resize_frames([square], 256)[0], torch.from_numpy(square).permute(2, 0, 1))


def test_channels_last_resize_and_crop_equal_the_channels_first_ones(
    frames: list[np.ndarray],
) -> None:
    # load_views, training clips and spotting windows resize in OpenCV's [H, W, 3] layout and
    # crop into [N, 3, C, C] planes: the same bytes as resize_frames + crop_frames
    for size, crop, offset in [(256, 224, (16, 16)), (64, 48, (0, 13)), (256, 256, (0, 0))]:
        hwc = resize_frames_hwc(frames, size)
        assert hwc.shape == (len(frames), size, size, 3) and hwc.dtype == np.uint8
        want = crop_frames(resize_frames(frames, size), crop, offset)
        got = crop_frames_hwc(hwc, crop, offset)
        assert got.is_contiguous() and torch.equal(got, want)
    out = torch.zeros((2, 3, 8, 8), dtype=torch.uint8)
    assert crop_frames_hwc(hwc[:2], 8, (3, 5), out=out) is out
    assert torch.equal(out, resize_frames(frames[:2], 256)[:, :, 3:11, 5:13])
    with pytest.raises(DataError, match="does not fit a 256x256 frame"):
        crop_frames_hwc(hwc[:1], 224, (40, 0))


def test_normalize_is_scale_then_standardise() -> None:
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(normalize(x), (x.float() / 255 - mean) / std, atol=1e-6, rtol=0)


def test_view_random_state_depends_only_on_its_identity() -> None:
    a = view_rng(0, "train", "train3/123", 1).random(4)
    view_rng(0, "train", "other", 0).random(100)  # other draws in between change nothing
    assert np.array_equal(a, view_rng(0, "train", "train3/123", 1).random(4))
    for other in [
        (1, "train", "train3/123", 1),
        (0, "test", "train3/123", 1),
        (0, "train", "train3/124", 1),
        (0, "train", "train3/123", 0),
    ]:
        assert not np.array_equal(a, view_rng(*other).random(4))


def test_plan_views_centre_and_random() -> None:
    spec = ViewSpec("test", num_frames=8, views=2, sampling="center", crop_mode="center")
    plan = plan_views(40, "k", spec)
    for idx, off in plan:
        assert np.array_equal(idx, sample_indices(40, 8, "center")) and off == (16, 16)
    spec = ViewSpec("train", num_frames=8, views=3, sampling="random", crop_mode="random")
    plan = plan_views(40, "k", spec)
    assert len({tuple(i) for i, _ in plan}) == 3 or len({o for _, o in plan}) > 1
    for v, (idx, off) in enumerate(plan):
        rng = view_rng(0, "train", "k", v)
        assert np.array_equal(idx, sample_indices(40, 8, "random", rng))
        assert off == crop_offset(256, 224, "random", rng)
    assert [(tuple(i), o) for i, o in plan] == [(tuple(i), o) for i, o in plan_views(40, "k", spec)]


@pytest.mark.parametrize("resize", [64, 256])  # 256: the fixture frames' own size (no resize)
@pytest.mark.parametrize("kind", ["folder", "video"])
def test_load_views_equals_manual_pipeline(shared: Path, kind: str, resize: int) -> None:
    # load_views resizes channels-last and splits each crop into planes with OpenCV: the same
    # bytes as the NCHW resize followed by a crop
    if kind == "folder":
        source = next((shared / "fixtures" / "ssv2_tiny" / "train" / "train1").iterdir())
    else:
        source = shared / "fixtures" / "videos" / "eye_makeup.avi"
    spec = ViewSpec(
        "train", num_frames=4, views=2, sampling="random", crop_mode="random", resize=resize
    )
    spec = dataclasses.replace(spec, crop=48)
    views, n = load_views(source, "some/key", spec)
    assert views.shape == (2, 4, 3, 48, 48) and views.dtype == torch.uint8
    assert views.is_contiguous()
    for v, (idx, (top, left)) in enumerate(plan_views(n, "some/key", spec)):
        full = resize_frames(read_frames(source, idx), resize)
        assert torch.equal(views[v], full[:, :, top : top + 48, left : left + 48])


def test_load_views_errors_name_the_source(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    with pytest.raises(DataError, match="bad.mp4"):
        load_views(bad, "k", ViewSpec("test"))
    empty = tmp_path / "folder"
    empty.mkdir()
    with pytest.raises(DataError, match="no .jpg"):
        load_views(empty, "k", ViewSpec("test"))


def _manual_views(source: Path, n: int, key: str, spec: ViewSpec) -> torch.Tensor:
    views = []
    for idx, (top, left) in plan_views(n, key, spec):
        full = resize_frames(read_frames(source, idx), spec.resize)
        views.append(full[:, :, top : top + spec.crop, left : left + spec.crop])
    return torch.stack(views)


def test_truncated_avi_declares_more_frames_than_decode_and_loads_the_decoded_ones(
    shared: Path, tmp_path: Path
) -> None:
    """The AVI header still declares 164 frames; fewer decode. The views are planned on the frames
    that decode (a second, shorter pass), as reading every frame would plan them."""
    import cv2

    data = (shared / "fixtures" / "videos" / "eye_makeup.avi").read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 6 // 10])
    declared = int(cv2.VideoCapture(str(cut)).get(cv2.CAP_PROP_FRAME_COUNT))
    decoded = sum(1 for _ in iter_video_frames(cut))
    assert 0 < decoded < declared  # the case under test
    spec = ViewSpec("train", 8, 2, "random", "random", resize=64, crop=48, seed=3)
    views, n = load_views(cut, "k", spec)
    assert n == decoded == count_frames(cut)
    assert torch.equal(views, _manual_views(cut, n, "k", spec))


@pytest.mark.parametrize("lie", [+37, -50, "none"])
def test_a_wrong_declared_frame_count_only_costs_a_second_pass(
    shared: Path, monkeypatch: pytest.MonkeyPatch, lie: int | str
) -> None:
    """Whatever count the container declares (too many, too few, none), the views are those of
    the frames that decode."""
    import fsar_cli.data.frames as frames

    source = shared / "fixtures" / "videos" / "cleaning_pool.mp4"
    spec = ViewSpec("test", 8, 3, "random", "center", resize=64, crop=48)
    honest, n = load_views(source, "k", spec)
    calls = []

    def lying(path, wanted_for, convert=None, to_end=True):  # type: ignore[no-untyped-def]
        calls.append(to_end)
        if to_end:  # the first pass: plan from a wrong declared count
            wrong = 0 if lie == "none" else n + int(lie)
            return scan_video(path, lambda _: wanted_for(wrong), convert, to_end)
        return scan_video(path, wanted_for, convert, to_end)

    monkeypatch.setattr(frames, "scan_video", lying)
    views, n2 = load_views(source, "k", spec)
    assert n2 == n and torch.equal(views, honest)
    assert calls == [True, False]  # one full pass, one pass up to the last wanted frame
    assert torch.equal(honest, _manual_views(source, n, "k", spec))


def test_finetune_clips_sample_the_frames_that_decode(shared: Path, tmp_path: Path) -> None:
    """The fine-tuning mode's clips (one pass keeping the sampled frames) are the frames that
    sampling every decoded frame with the same generator picks; the generator advances once."""
    from fsar_cli.data.clips import ClipSpec, _read_sampled

    data = (shared / "fixtures" / "videos" / "eye_makeup.avi").read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 6 // 10])  # declares more frames than decode
    sources = [*sorted((shared / "fixtures" / "videos").iterdir()), cut]
    for sampling in ("random", "center"):
        spec = ClipSpec(num_frames=8, sampling=sampling)
        for k, source in enumerate(sources):
            rng, twin = np.random.default_rng(k), np.random.default_rng(k)
            got = _read_sampled(source, spec, rng)
            every = list(iter_video_frames(source))
            idx = sample_indices(len(every), 8, sampling, twin)
            assert len(got) == 8
            assert all(np.array_equal(a, every[int(i)]) for a, i in zip(got, idx, strict=True))
            assert rng.random() == twin.random()  # both generators drew the same numbers
