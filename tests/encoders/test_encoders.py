"""CLIP encoders: random architectures, weights files, the offline official-name path."""

from __future__ import annotations

import hashlib
import urllib.error
import warnings
from pathlib import Path

import pytest
import torch

from fsar_cli.encoders.clip import (
    ARCHS,
    RANDOM_LABEL,
    TOWER_FILE,
    TOWER_META,
    Encoder,
    available_encoders,
    load_encoder,
    resolve_weights,
)
from fsar_cli.errors import EncoderError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import clip
    from clip.model import CLIP


@pytest.fixture(scope="module")
def tiny() -> Encoder:
    return load_encoder("random:tiny")


def _images(n: int = 3, res: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, res, res, generator=torch.Generator().manual_seed(seed))


def test_random_tiny_is_deterministic_and_labelled(tiny: Encoder) -> None:
    again = load_encoder("random:tiny")
    other = load_encoder("random:tiny", seed=1)
    assert tiny.is_random and tiny.text_random and RANDOM_LABEL in tiny.label
    assert tiny.weights_sha256 == again.weights_sha256 != other.weights_sha256
    assert (tiny.dim, tiny.input_resolution, tiny.context_length) == (32, 32, 77)
    x = _images()
    assert torch.equal(tiny.encode_images(x), again.encode_images(x))
    assert tiny.describe()["encoder_random"] is True
    assert all(p.dtype == torch.float32 for p in tiny.model.parameters())


def test_loading_a_random_encoder_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_encoder("random:tiny")
    assert torch.equal(torch.rand(3), expected)


def test_official_architectures_have_official_hyper_parameters() -> None:
    assert ARCHS["ViT-B/32"] == {
        "embed_dim": 512,
        "image_resolution": 224,
        "vision_layers": 12,
        "vision_width": 768,
        "vision_patch_size": 32,
        "context_length": 77,
        "vocab_size": 49408,
        "transformer_width": 512,
        "transformer_heads": 8,
        "transformer_layers": 12,
    }
    assert set(clip.available_models()) <= set(ARCHS)
    with torch.device("meta"):
        n_params = sum(p.numel() for p in CLIP(**ARCHS["ViT-B/32"]).parameters())
    assert n_params == 151_277_313  # OpenAI's ViT-B/32, as CLIP's README notebook prints it
    assert "random:ViT-B/16" in available_encoders() and "RN50" in available_encoders()


def test_encode_images_and_text_equal_the_clip_model(tiny: Encoder) -> None:
    x = _images(5)
    with torch.no_grad():
        direct = tiny.model.encode_image(x)
        text = tiny.model.encode_text(clip.tokenize(["a photo of running", "a photo of x"]))
    feats = tiny.encode_images(x, batch_size=2)
    assert feats.shape == (5, 32) and feats.dtype == torch.float32
    torch.testing.assert_close(feats, direct, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tiny.encode_text(["a photo of running", "a photo of x"]), text)
    assert tiny.encode_text(["word " * 200]).shape == (1, 32)  # truncated, not an error


def test_encode_text_runs_the_text_tower_only_up_to_the_longest_prompt(tiny: Encoder) -> None:
    # causal mask, output read at the end-of-text token: the 77-token context is not needed
    seen: list[int] = []
    block = tiny.model.transformer.resblocks[0].ln_1  # sees [positions, prompts, width]
    hook = block.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    try:
        texts = ["a photo of running", "a photo of x"]
        got = tiny.encode_text(texts)
    finally:
        hook.remove()
    longest = int(clip.tokenize(texts).argmax(dim=-1).max()) + 1  # start + words + end
    assert seen == [longest] and longest < tiny.context_length
    with torch.no_grad():
        torch.testing.assert_close(got, tiny.model.encode_text(clip.tokenize(texts)))


def test_wrong_image_size_names_the_fix(tiny: Encoder) -> None:
    with pytest.raises(EncoderError, match="features.crop=32"):
        tiny.encode_images(torch.zeros(1, 3, 224, 224))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "module_prefix", "torchscript"])
def test_whole_model_weights_file(tiny: Encoder, tmp_path: Path, wrap: str) -> None:
    sd = tiny.model.state_dict()
    path = tmp_path / "model.pt"
    if wrap == "plain":
        torch.save(sd, path)
    elif wrap == "state_dict":
        torch.save({"state_dict": sd, "epoch": 3}, path)
    elif wrap == "module_prefix":
        torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    else:  # like OpenAI's archives: a traced whole model whose state dict has CLIP's keys
        traced = torch.jit.trace_module(tiny.model, {"encode_image": _images(1)})
        traced.save(str(path))
    enc = load_encoder("my-clip", weights=path)
    assert not enc.is_random and not enc.text_random and enc.weights_sha256 == _sha(path)
    assert enc.weights_path == str(path) and RANDOM_LABEL not in enc.label
    x = _images()
    torch.testing.assert_close(enc.encode_images(x), tiny.encode_images(x))
    torch.testing.assert_close(enc.encode_text(["a b"]), tiny.encode_text(["a b"]))


@pytest.mark.parametrize("style", ["visual", "reference_checkpoint"])
def test_visual_tower_only_weights(tiny: Encoder, tmp_path: Path, style: str) -> None:
    visual = {f"visual.{k}": v for k, v in tiny.model.visual.state_dict().items()}
    path = tmp_path / "visual.pt"
    if style == "visual":
        torch.save(visual, path)
    else:  # CLIP-FSAR's model_state: head.backbone.* is the visual tower
        state = {"head." + k.replace("visual.", "backbone.", 1): v for k, v in visual.items()}
        state["head.scale"] = torch.ones(1)
        torch.save({"epoch": 1, "model_state": state}, path)
    enc = load_encoder("random:tiny", weights=path, seed=5)  # the text tower: seed 5
    assert not enc.is_random and enc.text_random and RANDOM_LABEL in enc.label
    x = _images()
    torch.testing.assert_close(enc.encode_images(x), tiny.encode_images(x))
    assert not torch.allclose(enc.encode_text(["a"]), tiny.encode_text(["a"]))
    with pytest.raises(EncoderError, match="name its architecture"):
        load_encoder("no-such-arch", weights=path)


def _tower_file(tmp_path: Path, seed: int) -> tuple[Path, CLIP]:
    """A visual-only weights file (as ``fsar train --mode finetune`` writes) of a tiny CLIP."""
    torch.manual_seed(seed)
    source = CLIP(**ARCHS["tiny"]).float().eval()
    path = tmp_path / f"tower-{seed}.pt"
    torch.save({f"visual.{k}": v for k, v in source.visual.state_dict().items()}, path)
    return path, source


def test_fine_tuned_official_tower_keeps_the_official_text_tower(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tiny stand-in for OpenAI's ViT-B/16: clip.load returns it, no network is touched.
    monkeypatch.setitem(ARCHS, "ViT-B/16", ARCHS["tiny"])
    torch.manual_seed(1)
    official = CLIP(**ARCHS["tiny"]).float().eval()
    calls = []

    def fake_load(name: str, device: str = "cpu", jit: bool = True, download_root=None):
        calls.append((name, download_root))
        return official, None

    monkeypatch.setattr(clip, "load", fake_load)
    path, tuned = _tower_file(tmp_path, seed=2)
    enc = load_encoder("ViT-B/16", weights=path, download_root=tmp_path)
    assert calls == [("ViT-B/16", str(tmp_path))]
    assert not enc.is_random and not enc.text_random and RANDOM_LABEL not in enc.label
    assert enc.weights_sha256 == _sha(path) and enc.weights_path == str(path)
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(enc.encode_images(x), tuned.visual(x))
        tokens = clip.tokenize(["a b"], context_length=official.context_length)
        torch.testing.assert_close(enc.encode_text(["a b"]), official.encode_text(tokens))
    # random:<name> keeps the seeded random text tower, labelled
    rnd = load_encoder("random:ViT-B/16", weights=path, seed=5)
    assert rnd.text_random and RANDOM_LABEL in rnd.label and len(calls) == 1
    assert not torch.allclose(rnd.encode_text(["a b"]), enc.encode_text(["a b"]))


def test_fine_tuned_official_tower_offline_names_the_text_tower_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(url: str, root: str) -> str:
        raise urllib.error.URLError("no network")

    monkeypatch.setitem(ARCHS, "ViT-B/16", ARCHS["tiny"])
    monkeypatch.setattr(clip.clip, "_download", offline)
    monkeypatch.setenv("HOME", str(tmp_path))  # the default root: ~/.cache/clip
    path, _ = _tower_file(tmp_path, seed=2)
    with pytest.raises(EncoderError) as err:
        load_encoder("ViT-B/16", weights=path)
    msg = str(err.value)
    assert str(tmp_path / ".cache" / "clip" / "ViT-B-16.pt") in msg and str(path) in msg
    assert "official ViT-B/16 text tower" in msg and "no network" in msg


def test_a_run_folder_means_its_fine_tuned_tower(tmp_path: Path, tiny: Encoder) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(EncoderError, match="frozen-mode runs train only the head"):
        resolve_weights(run)
    path, _ = _tower_file(tmp_path, seed=3)
    (run / TOWER_FILE).write_bytes(path.read_bytes())
    with pytest.raises(EncoderError, match=r"tower.json.*--encoder"):
        resolve_weights(run)  # no tower.json and no name
    (run / TOWER_META).write_text('{"format": "fsar-tower/1", "encoder": "random:tiny"}')
    assert resolve_weights(run) == (run / TOWER_FILE, "random:tiny")
    assert resolve_weights(run, "ViT-B/32") == (run / TOWER_FILE, "ViT-B/32")
    assert resolve_weights(path) == (path, None)
    enc = load_encoder("random:tiny", weights=run)
    assert enc.weights_path == str(run / TOWER_FILE) and enc.weights_sha256 == _sha(path)


def test_weights_that_do_not_fit_the_named_architecture(tiny: Encoder, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(tiny.model.state_dict(), path)
    with pytest.raises(EncoderError, match=r"not a ViT-B/32 CLIP: .*shape"):
        load_encoder("ViT-B/32", weights=path)


def test_bad_weights_files(tmp_path: Path) -> None:
    with pytest.raises(EncoderError, match="does not exist"):
        load_encoder("ViT-B/32", weights=tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00junk" * 50)
    with pytest.raises(EncoderError, match="junk.pt"):
        load_encoder("ViT-B/32", weights=junk)
    other = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(EncoderError, match="neither CLIP keys nor visual"):
        load_encoder("ViT-B/32", weights=other)


def test_official_name_without_network_names_the_expected_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(url: str, root: str) -> str:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(clip.clip, "_download", offline)
    with pytest.raises(EncoderError) as err:
        load_encoder("ViT-B/32", download_root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "ViT-B-32.pt") in msg and "--weights" in msg and "no network" in msg
    assert "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af" in msg


def test_unknown_names_list_the_choices() -> None:
    with pytest.raises(EncoderError, match=r"unknown encoder 'ViT-X'.*ViT-B/16.*random:tiny"):
        load_encoder("ViT-X")
    with pytest.raises(EncoderError, match="unknown architecture in 'random:huge'"):
        load_encoder("random:huge")
