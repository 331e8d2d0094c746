"""Episode sampler: invariants over a grid, reproducibility, boundary errors, episode files."""

from __future__ import annotations

import numpy as np
import pytest

from fsar_cli import episode_rng
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


def _one_by_one(sampler: EpisodeSampler, n: int, start: int) -> list[np.ndarray]:
    """The episodes from their own numpy generators, one at a time (the definition)."""
    parts = [sampler.episode(i) for i in range(start, start + n)]
    return [np.stack([p[j] for p in parts]) for j in range(5)]


def _fields(batch) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    b = batch
    return [b.classes, b.support_rows, b.query_rows, b.support_views, b.query_views]


# uneven classes; class 0 and 3 hold exactly 6 = the largest shot + query below (nothing to draw
# on the last Floyd step), class 4 is larger than the others together
UNEVEN = np.concatenate([np.full(n, c) for c, n in enumerate([6, 9, 13, 6, 40, 7, 11])])


@pytest.mark.parametrize("seed", [0, 1, 987_654_321, 2**32 - 1])
@pytest.mark.parametrize("way_shot_query", [(1, 1, 1), (5, 1, 1), (5, 5, 1), (7, 5, 1), (3, 2, 4)])
def test_batched_draw_equals_each_episodes_own_numpy_generator(
    seed: int, way_shot_query: tuple[int, int, int]
) -> None:
    way, shot, query = way_shot_query
    sampler = EpisodeSampler(UNEVEN[::-1].copy(), way, shot, query, seed=seed)
    assert episode_rng.supported(seed, 40, shot + query)
    got = _fields(sampler.sample(300, start=17))
    for g, w in zip(got, _one_by_one(sampler, 300, 17), strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("case", ["seed above 32 bits", "views", "class above 10,000"])
def test_batched_draw_falls_back_to_numpy_where_it_does_not_apply(case: str) -> None:
    labels, seed, views = UNEVEN, 7, 1
    if case == "seed above 32 bits":
        seed = 2**40 + 3
    elif case == "views":
        views = 3
    else:  # numpy shuffles the tail of a population this large instead of Floyd's algorithm
        labels = np.concatenate([np.zeros(10_001, np.int64), np.ones(300, np.int64)])
    shot = 250 if case == "class above 10,000" else 2
    sampler = EpisodeSampler(labels, 2, shot, 1, seed=seed, num_views=views, sample_views=views > 1)
    got = _fields(sampler.sample(4, start=5))
    for g, w in zip(got, _one_by_one(sampler, 4, 5), strict=True):
        np.testing.assert_array_equal(g, w)


def test_bounded_draws_with_rejections_equal_numpy_integers() -> None:
    # ranges near 2**31 reject about half of the 32-bit draws: lanes redraw out of step with
    # each other, and the 64-bit outputs' halves must still be handed out in numpy's order
    index = np.arange(200)
    streams = episode_rng.EpisodeStreams(11, index)
    tops = [2**31 + 5, 3, 2**31 + 2**30, 0, 17, 2**32 - 3]
    got = np.stack([streams.bounded(np.full(len(index), t, np.uint64)) for t in tops], 1)
    want = []
    for i in index:
        rng = np.random.default_rng([11, int(i)])
        want.append([rng.integers(0, t + 1) if t else 0 for t in tops])
    np.testing.assert_array_equal(got.astype(np.int64), np.array(want, np.int64))
