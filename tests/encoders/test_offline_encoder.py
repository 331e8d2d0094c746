"""The offline demo encoder: deterministic training, OpenAI-format weights, caching, quality."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from clip.model import build_model

from fsar_cli.encoders import offline
from fsar_cli.encoders.offline import (
    DEFAULT_CONFIG,
    OFFLINE_ENCODER_DESCRIPTION,
    OFFLINE_ENCODER_NAME,
    OfflineEncoderConfig,
    encoder_path,
    ensure_offline_encoder,
    evaluate_offline_encoder,
    load_offline_encoder,
    train_offline_encoder,
)
from fsar_cli.encoders.text import encode_text_short

# A few steps of a small pool: seconds, but every code path of the real training.
TINY = dataclasses.replace(
    DEFAULT_CONFIG,
    pool=48,
    clip_pool=16,
    image_steps=3,
    text_steps=3,
    batch_size=16,
    text_batch_size=16,
    warmup=2,
    threads=1,
)


def _images(n: int = 6, res: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, 3, res, res))).float()


def test_names_say_it_is_not_openai() -> None:
    assert OFFLINE_ENCODER_NAME == "offline-demo"
    assert "NOT the OpenAI" in OFFLINE_ENCODER_DESCRIPTION


def test_short_text_forward_equals_encode_text() -> None:
    torch.manual_seed(0)
    model = offline.build_offline_clip(TINY).eval()
    texts, _ = offline._prompts()
    tokens = offline._tokenize(texts[:40], TINY.context_length)
    with torch.no_grad():
        full = model.encode_text(tokens)  # the whole 77-token context
        short = encode_text_short(model, tokens)
    torch.testing.assert_close(short, full, atol=1e-5, rtol=1e-5)


def test_training_is_deterministic() -> None:
    a, stats_a = train_offline_encoder(TINY)
    b, _ = train_offline_encoder(TINY)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert stats_a["config_hash"] == offline.config_hash(TINY)
    # the training really changed the weights of both towers (not a no-op)
    torch.manual_seed(TINY.seed)
    init = offline._openai_state_dict(offline.build_offline_clip(TINY))
    for key in (
        "visual.conv1.weight",
        "text_projection",
        "transformer.resblocks.0.attn.in_proj_weight",
    ):
        assert not torch.equal(a[key], init[key]), key
    # the caption words' embedding rows were trained; other rows were left alone
    used = torch.unique(offline._tokenize(offline._prompts()[0], TINY.context_length))
    emb_a, emb_0 = a["token_embedding.weight"], init["token_embedding.weight"]
    assert not torch.equal(emb_a[used], emb_0[used])
    unused = torch.ones(len(emb_a), dtype=torch.bool)
    unused[used] = False
    assert torch.equal(emb_a[unused], emb_0[unused])


def test_weights_load_with_build_model_and_clip_load(tmp_path) -> None:
    import clip

    from fsar_cli.encoders.clip import load_encoder

    path = ensure_offline_encoder(tmp_path, cfg=TINY)
    assert path == encoder_path(TINY, tmp_path)
    assert path.name == f"offline-demo-{offline.config_hash(TINY)}.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["visual.conv1.weight"].dtype == torch.float16  # as OpenAI ships its weights
    ours = load_offline_encoder(path)
    plain = build_model(dict(state)).float().eval()
    via_clip, _ = clip.load(str(path), device="cpu", jit=False)
    via_fsar = load_encoder(OFFLINE_ENCODER_NAME, weights=path)
    assert plain.visual.input_resolution == TINY.image_resolution
    assert plain.context_length == 77
    x = _images()
    with torch.no_grad():
        ref = plain.encode_image(x)
        torch.testing.assert_close(ours.encode_image(x), ref, atol=0, rtol=0)
        torch.testing.assert_close(via_clip.encode_image(x), ref, atol=0, rtol=0)
        torch.testing.assert_close(via_fsar.encode_images(x), ref, atol=1e-6, rtol=1e-6)
    assert ref.shape == (6, TINY.embed_dim)
    text = via_fsar.encode_text(["a shape moving from left to right"])
    assert text.shape == (1, TINY.embed_dim) and torch.isfinite(text).all()


def test_cache_is_reused_without_retraining(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FSAR_HOME", str(tmp_path / "home"))
    calls = []
    real = offline.train_offline_encoder

    def counting(cfg, on_progress=None):
        calls.append(cfg)
        return real(cfg, on_progress=on_progress)

    monkeypatch.setattr(offline, "train_offline_encoder", counting)
    ticks = []
    first = ensure_offline_encoder(cfg=TINY, on_progress=lambda n=1, **kw: ticks.append(n))
    assert first.parent == tmp_path / "home" / "encoders"
    assert sum(ticks) == TINY.image_steps + TINY.text_steps
    mtime = first.stat().st_mtime_ns
    second = ensure_offline_encoder(cfg=TINY)
    assert second == first and len(calls) == 1 and first.stat().st_mtime_ns == mtime
    assert not list(first.parent.glob(".*tmp*")), "temporary files left behind"
    stats = offline.read_training_stats(first)
    assert stats is not None and stats["config_hash"] == offline.config_hash(TINY)
    # other settings -> another file, trained anew
    other = dataclasses.replace(TINY, seed=1)
    assert ensure_offline_encoder(cfg=other) != first and len(calls) == 2


def test_config_hash_names_the_settings() -> None:
    assert offline.config_hash(DEFAULT_CONFIG) == offline.config_hash(OfflineEncoderConfig())
    assert offline.config_hash(DEFAULT_CONFIG) != offline.config_hash(TINY)


def test_evaluate_reports_accuracy_and_chance(tmp_path) -> None:
    path = ensure_offline_encoder(tmp_path, cfg=TINY)
    scores = evaluate_offline_encoder(path, n=60)
    assert scores["n"] == 60
    assert scores["chance"] == pytest.approx(
        {
            "full": 1 / 216,
            "position": 1 / 9,
            "colour": 1 / 8,
            "size": 1 / 3,
            "motion": 1 / 72,  # 36 motion pairs, both ways
            "path": 1 / 36,  # a clip's path, either twin
        },
        abs=1e-4,
    )
    for name in ("full", "position", "colour", "size", "motion", "path"):
        assert 0.0 <= scores[name] <= 1.0


def test_unreadable_weights_are_an_encoder_error(tmp_path) -> None:
    from fsar_cli.errors import EncoderError

    bad = tmp_path / "offline-demo-x.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderError, match="delete the file"):
        load_offline_encoder(bad)


@pytest.mark.slow
def test_demo_encoder_learns_position_and_separates_reversed_motions(tmp_path) -> None:
    """The real demo encoder: zero-shot attributes well above chance, and OTAM beats proto."""
    from fsar_cli.data.preprocess import preprocess_frames
    from fsar_cli.data.synth import render_dataset
    from fsar_cli.models.otam import cos_sim, frame_distances, otam_distance

    path = ensure_offline_encoder()  # $FSAR_HOME of the session (conftest): trained once, shared
    scores = evaluate_offline_encoder(path, n=500)
    assert scores["position"] > 0.8  # chance 0.11
    assert scores["size"] > 0.6  # chance 0.33
    assert scores["colour"] > 0.5  # chance 0.125
    # the text tower reads motion captions: the path of a clip (either twin) from its caption
    assert scores["path"] > 0.4  # chance 0.028; a clip and its reversed twin share their frames

    # few-shot: 5-way 1-shot on the synthetic test split (5 reversed pairs), 8 centre frames
    data = render_dataset(tmp_path / "synth", videos_per_class=8, n_train_pairs=1, n_val_pairs=1)
    model = load_offline_encoder(path)
    res = model.visual.input_resolution
    feats, labels = [], []
    from fsar_cli.data.frames import read_frames, sample_indices
    from fsar_cli.data.splits import read_split

    for e in read_split(data.split_dir / "test_few_shot.txt", "test"):
        frames = read_frames(data.root / e.rel_path, sample_indices(16, 8, "center"))
        with torch.no_grad():
            feats.append(model.encode_image(preprocess_frames(frames, res, res)))
        labels.append(e.class_id)
    x, y = torch.stack(feats), np.asarray(labels)  # [V, 8, D], [V]
    rng = np.random.default_rng(0)
    hits = {"proto": 0, "otam": 0}
    n_episodes = 150
    for _ in range(n_episodes):
        way = rng.choice(10, 5, replace=False)
        picks = [rng.choice(np.flatnonzero(y == c), 2, replace=False) for c in way]
        sup = x[[p[0] for p in picks]]  # [5, 8, D]
        qry = x[[p[1] for p in picks]]  # [5, 8, D]
        proto = cos_sim(qry.mean(1), sup.mean(1))  # [5 queries, 5 classes]
        dist = otam_distance(frame_distances(qry, sup), bidirectional=True)  # [5, 5]
        hits["proto"] += int((proto.argmax(1) == torch.arange(5)).sum())
        hits["otam"] += int((dist.argmin(1) == torch.arange(5)).sum())
    acc = {k: v / (5 * n_episodes) for k, v in hits.items()}
    assert acc["proto"] > 0.3, acc  # chance 0.2
    # the full demo measures otam 57.0 vs proto 39.1 (2,000 episodes); 750 queries here: SE ~2.5
    assert acc["otam"] > acc["proto"] + 0.08, acc
