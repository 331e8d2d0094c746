"""Episode sampler: invariants over a grid, reproducibility, boundary errors, episode files."""

from __future__ import annotations

import numpy as np
import pytest

from fsar_cli.episodes import EpisodeSampler, load_episodes, save_episodes
from fsar_cli.errors import EpisodeError

LABELS = np.repeat(np.arange(7), 6)  # 7 classes x 6 videos


@pytest.mark.parametrize("n_way", [1, 3, 5, 7])
@pytest.mark.parametrize("k_shot", [1, 2, 5])
@pytest.mark.parametrize("n_query", [1])
def test_invariants(n_way: int, k_shot: int, n_query: int) -> None:
    sampler = EpisodeSampler(LABELS, n_way, k_shot, n_query, seed=3)
    batch = sampler.sample(20)
    assert batch.classes.shape == (20, n_way)
    assert batch.support_rows.shape == (20, n_way * k_shot)
    assert batch.query_rows.shape == (20, n_way * n_query)
    for e in range(20):
        assert len(set(batch.classes[e])) == n_way
        s, q = batch.support_rows[e], batch.query_rows[e]
        assert not set(s) & set(q), "support and query overlap"
        assert len(set(s)) == len(s) and len(set(q)) == len(q)
        # slot w holds videos of episode class w
        np.testing.assert_array_equal(LABELS[s], np.repeat(batch.classes[e], k_shot))
        np.testing.assert_array_equal(LABELS[q], np.repeat(batch.classes[e], n_query))
    np.testing.assert_array_equal(batch.support_labels[0], np.repeat(np.arange(n_way), k_shot))


def test_same_seed_same_episodes_any_batching() -> None:
    a = EpisodeSampler(LABELS, 5, 1, 1, seed=0).sample(30)
    b = EpisodeSampler(LABELS, 5, 1, 1, seed=0)
    parts = [b.sample(10, start=i) for i in (0, 10, 20)]
    np.testing.assert_array_equal(a.support_rows, np.concatenate([p.support_rows for p in parts]))
    np.testing.assert_array_equal(a.query_rows, np.concatenate([p.query_rows for p in parts]))
    c = EpisodeSampler(LABELS, 5, 1, 1, seed=1).sample(30)
    assert not np.array_equal(a.support_rows, c.support_rows)


def test_boundaries() -> None:
    # 6 videos per class: k_shot + n_query = 6 is fine, 7 is one too many
    EpisodeSampler(LABELS, 7, 5, 1)
    with pytest.raises(EpisodeError, match=r"has 6 usable videos.*5 \+ 2 = 7"):
        EpisodeSampler(LABELS, 5, 5, 2)
    with pytest.raises(EpisodeError, match="n_way = 8 but the split has only 7 classes"):
        EpisodeSampler(LABELS, 8, 1, 1)
    with pytest.raises(EpisodeError, match=">= 1"):
        EpisodeSampler(LABELS, 5, 0, 1)


def test_class_name_in_error_and_missing_features() -> None:
    usable = np.ones(len(LABELS), bool)
    usable[:3] = False  # class 0 keeps 3 usable videos
    names = ["kiss"] + [f"c{i}" for i in range(1, 7)]
    with pytest.raises(EpisodeError, match="3 of 42 listed videos have no features"):
        EpisodeSampler(LABELS, 5, 1, 1, usable=usable, class_names=names)
    with pytest.raises(EpisodeError, match="'kiss' \\(id 0\\) has 3 usable videos"):
        EpisodeSampler(LABELS, 5, 3, 1, usable=usable, class_names=names, allow_missing=True)
    s = EpisodeSampler(LABELS, 5, 1, 1, usable=usable, allow_missing=True)
    batch = s.sample(50)
    assert not np.isin(batch.support_rows, [0, 1, 2]).any()
    assert not np.isin(batch.query_rows, [0, 1, 2]).any()


def test_views_sampled_only_when_asked() -> None:
    s = EpisodeSampler(LABELS, 5, 1, 1, num_views=4, sample_views=True).sample(40)
    assert s.support_views.max() > 0 and s.support_views.max() < 4
    s0 = EpisodeSampler(LABELS, 5, 1, 1, num_views=4).sample(40)
    assert s0.support_views.max() == 0


def test_gather_shapes() -> None:
    feats = np.arange(42 * 2 * 3 * 4, dtype=np.float16).reshape(42, 2, 3, 4)
    b = EpisodeSampler(LABELS, 5, 2, 1, num_views=2, sample_views=True).sample(3)
    s, q = b.gather(feats)
    assert s.shape == (3, 10, 3, 4) and q.shape == (3, 5, 3, 4)
    np.testing.assert_array_equal(s[1, 4], feats[b.support_rows[1, 4], b.support_views[1, 4]])


def test_save_load_round_trip(tmp_path) -> None:
    keys = [f"vid{i}" for i in range(len(LABELS))]
    b = EpisodeSampler(LABELS, 5, 2, 1, seed=9).sample(12)
    path = save_episodes(tmp_path / "eps.json", b, keys, {"split": "test", "seed": 9})
    b2, info = load_episodes(path, keys)
    assert info["split"] == "test" and info["k_shot"] == 2
    np.testing.assert_array_equal(b.classes, b2.classes)
    np.testing.assert_array_equal(b.support_rows, b2.support_rows)
    np.testing.assert_array_equal(b.query_rows, b2.query_rows)
    with pytest.raises(EpisodeError, match="does not list"):
        load_episodes(path, keys[:-10])
