"""``train.mode: finetune`` on real SSv2 frames with a tiny random CLIP: data, learning,
checkpoints, the tower's use by ``fsar cache``, exact resume, and worker-count independence."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from clip.model import CLIP

from fsar_cli.data.clips import ClipSpec, EpisodeClips, VideoClips, split_sources
from fsar_cli.encoders.clip import ARCHS, TOWER_FILE, load_encoder
from fsar_cli.episodes import EpisodeSampler
from fsar_cli.errors import TrainError
from fsar_cli.features.cache import cache_features
from fsar_cli.features.store import FeatureStore
from fsar_cli.models import create_head, load_head_checkpoint
from fsar_cli.recipe import ModelCfg, Recipe, load_recipe
from fsar_cli.train.finetune import finetune_train
from fsar_cli.train.loop import TrainResult
from fsar_cli.train.tower import enable_grad_checkpointing, encode_clips, episode_loss

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
TINY = SHARED / "fixtures" / "ssv2_tiny"
TRAIN_NAMES = ["pushing", "pulling", "dropping", "lifting", "folding"]
VAL_NAMES = ["tearing", "poking", "spinning", "rolling", "squeezing"]
TRAIN = (
    "mode: finetune, n_way: 5, k_shot: 1, n_query: 1, steps: 4, episodes_per_step: 2, lr: 1.0e-3, "
    "warmup_lr: 1.0e-4, lr_step: 1, val_every: 2, val_episodes: 8, checkpoint_every: 2, "
    "lambda_vt: 1.0, workers: 0"
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Split files over the fixture's frame folders (train: train0-4 plus one missing video; val:
    test0-4) and a frames root that maps ``{split}`` to the fixture's folders (symlinks)."""
    root = tmp_path_factory.mktemp("ft-data")
    (root / "frames").mkdir()
    (root / "frames" / "train").symlink_to(TINY / "train")
    (root / "frames" / "val").symlink_to(TINY / "test")
    (root / "splits").mkdir()
    lines = [
        f"train{c}/{v.name}" for c in range(5) for v in sorted((TINY / f"train/train{c}").iterdir())
    ]
    (root / "splits" / "train_few_shot.txt").write_text(
        "\n".join(lines + ["train0/99999999"]) + "\n"
    )
    val = [
        f"test{c}/{v.name}"
        for c in range(5)
        for v in sorted((TINY / f"test/test{c}").iterdir())[:4]
    ]
    (root / "splits" / "val_few_shot.txt").write_text("\n".join(val) + "\n")
    return root


def make_recipe(data: Path, tmp: Path, train: str = TRAIN, **extra: str) -> Recipe:
    features = "encoder: 'random:tiny', resize: 40, crop: 32, sampling: {val: center}"
    features += "".join(f", {k}: {v}" for k, v in extra.items())
    text = (
        f"name: tiny-ft\n"
        f"data: {{split_dir: {data / 'splits'}, frames_root: {data / 'frames'}, "
        f"frames_layout: '{{split}}/{{class_field}}/{{video_id}}', "
        f"classes: {{train: {TRAIN_NAMES}, val: {VAL_NAMES}}}}}\n"
        f"features: {{{features}, cache_dir: {tmp / 'cache'}}}\n"
        "model: {ffn_dim: 64, num_heads: 4}\n"
        f"train: {{{train}}}\n"
        "eval: {n_way: 5, n_query: 1}\n"
    )
    path = tmp / "recipe.yaml"
    path.write_text(text)
    return load_recipe(path)


def episodes(recipe: Recipe, spec: ClipSpec, ids: list[int]) -> EpisodeClips:
    entries, sources = split_sources(recipe, "train")
    sampler = EpisodeSampler(
        np.array([e.class_id for e in entries]),
        5,
        1,
        1,
        seed=0,
        usable=np.array([s is not None for s in sources]),
        allow_missing=True,
    )
    return EpisodeClips(sources, sampler, ids, spec, entries)


def test_episode_clips_are_seeded_per_episode(data: Path, tmp_path: Path) -> None:
    recipe = make_recipe(data, tmp_path)
    spec = ClipSpec(8, 40, 32, "random", "random", False, 0)
    ds = episodes(recipe, spec, [0, 1, 0])
    a, b, again = ds[0], ds[1], ds[2]
    assert a["frames"].shape == (10, 8, 3, 32, 32) and a["frames"].dtype == torch.uint8
    assert torch.equal(a["frames"], again["frames"])  # same episode, same frames
    assert not torch.equal(a["frames"], b["frames"])
    assert a["support_labels"].tolist() == list(range(5)) == a["query_labels"].tolist()
    assert torch.equal(a["video_labels"], torch.cat([a["classes"], a["classes"]]))
    # Kinetics: flip + colour jitter on queries only; supports unchanged
    aug = episodes(recipe, dataclasses.replace(spec, query_augment=True), [0])[0]["frames"]
    assert torch.equal(aug[:5], a["frames"][:5]) and not torch.equal(aug[5:], a["frames"][5:])
    # worker processes deliver exactly the same episodes, in order
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    for got, want in zip(loader, [a, b, again], strict=True):
        assert torch.equal(got["frames"], want["frames"])
    assert sum(s is None for s in ds.sources) == 1  # the listed-but-missing video


def _tiny_resnet() -> torch.nn.Module:
    arch = dict(ARCHS["tiny"], vision_layers=(1, 1, 1, 1), vision_width=16, vision_patch_size=None)
    torch.manual_seed(0)
    return CLIP(**arch).visual.float()


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_grad_checkpointing_gives_the_same_gradients(kind: str) -> None:
    make = _tiny_resnet if kind == "resnet" else lambda: load_encoder("random:tiny").model.visual
    x = torch.randn(6, 3, 32, 32)
    grads, stats = [], []
    for ckpt in (False, True):
        visual = make().requires_grad_(True).train()
        if ckpt:
            assert enable_grad_checkpointing(visual) == (4 if kind == "resnet" else 2)
        visual(x).square().sum().backward()
        grads.append([p.grad.clone() for p in visual.parameters()])
        stats.append([b.clone() for b in visual.buffers()])  # BatchNorm: updated once, not twice
    for g0, g1 in zip(*grads, strict=True):
        torch.testing.assert_close(g0, g1, rtol=1e-5, atol=1e-6)
    for s0, s1 in zip(*stats, strict=True):
        assert torch.equal(s0, s1)


def test_finetuning_lowers_the_loss_of_an_episode(data: Path, tmp_path: Path) -> None:
    recipe = make_recipe(data, tmp_path)
    item = episodes(recipe, ClipSpec(8, 40, 32, "random", "random", False, 0), [3])[0]
    enc = load_encoder("random:tiny")
    text = enc.encode_text([f"a photo of {n}" for n in TRAIN_NAMES]).clone()  # [5, D], frozen
    visual = enc.model.visual.requires_grad_(True).train()
    before_w = {k: v.clone() for k, v in visual.state_dict().items()}
    torch.manual_seed(0)
    head = create_head("clipfsar", enc.dim, ModelCfg(ffn_dim=64, num_heads=4, adapter="none"))
    opt = torch.optim.Adam([*visual.parameters(), *head.parameters()], lr=1e-3)
    dev = torch.device("cpu")

    def loss() -> float:
        head.eval()
        with torch.no_grad():
            value = episode_loss(visual, head, item, text, 1.0, dev)["loss"].item()
        head.train()
        return value

    start = loss()
    for _ in range(8):
        opt.zero_grad()
        episode_loss(visual, head, item, text, 1.0, dev)["loss"].backward()
        opt.step()
    assert loss() < start - 0.1
    assert any(not torch.equal(before_w[k], v) for k, v in visual.state_dict().items())


def _state(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    s = torch.load(run / "last.pt", weights_only=True)
    return {"tower": s["tower_state"], "head": s["model_state"]}


def _same(a: dict[str, dict[str, torch.Tensor]], b: dict[str, dict[str, torch.Tensor]]) -> None:
    for part in ("tower", "head"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part} {k} differs"


def test_run_checkpoints_cache_resume_and_workers(data: Path, tmp_path: Path) -> None:
    recipe = make_recipe(data, tmp_path)
    seen: list[str | None] = []
    result = finetune_train(
        recipe, tmp_path / "a", on_progress=lambda n=1, **kw: seen.append(kw.get("label"))
    )
    assert isinstance(result, TrainResult) and result.finished and result.steps_done == 4
    assert result.best_step in (2, 4) and 0.0 <= result.best_val_acc <= 1.0
    assert len(seen) == 5 and "loss" in (seen[-1] or "")
    run = tmp_path / "a"
    for name in ("last.pt", "best.pt", TOWER_FILE, "tower.json", "metrics.csv", "summary.json"):
        assert (run / name).is_file(), name
    tower = torch.load(run / TOWER_FILE, weights_only=True)
    assert tower and all(k.startswith("visual.") for k in tower)
    initial = load_encoder("random:tiny").model.visual.state_dict()
    assert any(not torch.equal(initial[k.removeprefix("visual.")], v) for k, v in tower.items())
    head, extra = load_head_checkpoint(run / "best.pt")
    assert extra["tower"] == TOWER_FILE and extra["encoder"] == "random:tiny"
    assert extra["step"] == result.best_step

    # the fine-tuned tower, through `fsar cache --encoder random:tiny --weights tower.pt`
    cached = make_recipe(data, tmp_path, weights=str(run / TOWER_FILE))
    cache_features(cached, ("val",))
    store = FeatureStore.open(tmp_path / "cache" / "val")
    visual = CLIP(**ARCHS["tiny"]).visual.float().eval()
    visual.load_state_dict({k.removeprefix("visual."): v for k, v in tower.items()})
    entries, sources = split_sources(cached, "val")
    clips = VideoClips(sources, range(len(entries)), ClipSpec(8, 40, 32, "center", "center"))
    frames = torch.stack([clips[i]["frames"] for i in range(len(clips))])
    with torch.no_grad():
        direct = encode_clips(visual, frames, torch.device("cpu"))  # [videos, T, D]
    got = torch.from_numpy(np.asarray(store.features[:, 0], np.float32))
    torch.testing.assert_close(got, direct, rtol=2e-3, atol=2e-3)  # the store holds float16
    assert not store.meta["encoder_random"] and store.meta["text_encoder_random"]

    # stopped after 2 steps and resumed: exactly the weights of the uninterrupted run
    finetune_train(recipe, tmp_path / "b", max_steps=2)
    resumed = finetune_train(recipe, tmp_path / "b", resume=True)
    assert resumed.resumed_from == 2 and resumed.finished
    _same(_state(run), _state(tmp_path / "b"))
    assert resumed.best_val_acc == result.best_val_acc

    # two decoding processes: the same data, so the same weights
    two = make_recipe(data, tmp_path, train=TRAIN.replace("workers: 0", "workers: 2"))
    finetune_train(two, tmp_path / "c")
    _same(_state(run), _state(tmp_path / "c"))


def test_refusals(data: Path, tmp_path: Path) -> None:
    frozen = make_recipe(data, tmp_path, train=TRAIN.replace("finetune", "frozen"))
    with pytest.raises(TrainError, match="train.mode"):
        finetune_train(frozen, tmp_path / "x")
    recipe = make_recipe(data, tmp_path)
    unnamed = dataclasses.replace(
        recipe,
        data=dataclasses.replace(
            recipe.data,
            classes=dataclasses.replace(recipe.data.classes, train=(*TRAIN_NAMES[:4], None)),
        ),
    )
    with pytest.raises(TrainError, match="no name"):
        finetune_train(unnamed, tmp_path / "y")


@pytest.mark.slow
def test_two_ranks_train_like_one_process(data: Path, tmp_path: Path) -> None:
    """torchrun, 2 CPU ranks (gloo), one episode each per step: the weights of one process."""
    train = TRAIN.replace("steps: 4", "steps: 2")
    recipe = make_recipe(data, tmp_path, train=train)
    no_dropout = dataclasses.replace(
        recipe, model=dataclasses.replace(recipe.model, attn_dropout=0.0, ffn_dropout=0.0)
    )  # ranks draw their own dropout masks; without dropout the updates must agree
    finetune_train(no_dropout, tmp_path / "one")
    script = tmp_path / "ranks.py"
    script.write_text(
        "import sys, torch\n"
        "torch.set_num_threads(1)\n"
        "from fsar_cli.train.finetune import finetune_train\n"
        "from fsar_cli.recipe import load_recipe\n"
        "r = load_recipe(sys.argv[1], ['model.attn_dropout=0.0', 'model.ffn_dropout=0.0'])\n"
        "finetune_train(r, sys.argv[2])\n"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_addr", "127.0.0.1", "--master_port", str(port), str(script)]
    cmd += [str(tmp_path / "recipe.yaml"), str(tmp_path / "two")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _same(_state(tmp_path / "one"), _state(tmp_path / "two"))
    assert len(torch.load(tmp_path / "two" / "last.pt", weights_only=True)["rng"]) == 2


def test_finetuned_checkpoint_records_its_tower_and_refuses_other_features(
    data: Path, tmp_path: Path
) -> None:
    """Issue 14: a finetune run records feature provenance as a frozen one does. best.pt names
    its tower.pt (so `fsar eval` refuses the original encoder's features by name, and takes those
    of `fsar cache --weights RUN`); last.pt names the encoder it started from (resume)."""
    from helpers import one_line_error
    from typer.testing import CliRunner

    from fsar_cli.cli.app import app
    from fsar_cli.encoders.clip import weights_file_sha256

    def fsar(*args: object) -> object:
        return CliRunner().invoke(app, [str(a) for a in args])

    make_recipe(data, tmp_path, train=TRAIN.replace("steps: 4", "steps: 2"))
    recipe, run = tmp_path / "recipe.yaml", tmp_path / "run"
    res = fsar("train", recipe, "--out", run, "--steps", 1)
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    base = load_encoder("random:tiny").weights_sha256
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["features"] == {
        "encoder": "random:tiny",
        "weights_sha256": base,
        "resize": 40,
        "crop": 32,
        "num_frames": 8,
        "sampling": "random",
        "split": "train",
    }
    # resumed on other weights than it started from: refused by name, unless deliberate
    state["features"]["weights_sha256"] = "d" * 64
    torch.save(state, run / "last.pt")
    res = fsar("train", recipe, "--out", run, "--resume")
    one_line_error(res, "weights_sha256", "'" + "d" * 64 + "'", base, "--allow-other-features")
    assert int(torch.load(run / "last.pt", weights_only=True)["step"]) == 1  # nothing trained
    res = fsar("train", recipe, "--out", run, "--resume", "--allow-other-features")
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]

    tower_sha = weights_file_sha256(run / TOWER_FILE)
    recorded = load_head_checkpoint(run / "best.pt")[1]["features"]
    assert recorded == {**state["features"], "weights_sha256": tower_sha}
    assert tower_sha != base

    # the original encoder's features: refused by name (the head was trained on the tower's)
    assert fsar("cache", recipe, "--split", "val", "--device", "cpu").exit_code == 0  # type: ignore[attr-defined]
    args = ["eval", recipe, "-c", run, "--split", "val", "--episodes", 10, "--no-record"]
    res = fsar(*args)
    one_line_error(res, str(run / "best.pt"), "weights_sha256", base, tower_sha)
    res = fsar(*args, "--allow-other-features")
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    # the fine-tuned tower's features (`fsar cache --weights RUN`): accepted
    other = ["--set", f"features.cache_dir={tmp_path / 'tower-cache'}"]
    res = fsar("cache", recipe, "--split", "val", "--device", "cpu", "--weights", run, *other)
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    res = fsar(*args, *other)
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
