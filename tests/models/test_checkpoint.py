"""Reference checkpoints in, fsar checkpoints out: weights, tower renaming, trust, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fsar_cli.errors import CheckpointError
from fsar_cli.models import (
    CLIPFSARHead,
    create_head,
    import_reference_checkpoint,
    load_head_checkpoint,
    load_reference_checkpoint,
    reference_key_to_fsar,
    save_head_checkpoint,
)
from fsar_cli.models.checkpoint import tower_path_for
from fsar_cli.recipe import ModelCfg

D, FFN = 16, 40


class NotAllowed:  # a custom class: only arbitrary unpickling can rebuild it
    def __init__(self) -> None:
        self.value = 3


def _reference_state(seed: int = 0, backbone: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    p = "head.context2.layers.0."
    sd = {
        "head.scale": r(1),
        p + "0.norm.weight": r(D),
        p + "0.norm.bias": r(D),
        p + "0.fn.to_q.weight": r(D, D),
        p + "0.fn.to_k.weight": r(D, D),
        p + "0.fn.to_v.weight": r(D, D),
        p + "0.fn.to_out.0.weight": r(D, D),
        p + "0.fn.to_out.0.bias": r(D),
        p + "1.net.0.weight": r(FFN, D),
        p + "1.net.0.bias": r(FFN),
        p + "1.net.3.weight": r(D, FFN),
        p + "1.net.3.bias": r(D),
    }
    if backbone:
        sd["head.backbone.conv1.weight"] = r(8, 3, 4, 4)
        sd["head.backbone.ln_post.weight"] = r(8)
        sd["head.backbone.transformer.resblocks.0.attn.in_proj_weight"] = r(24, 8)
    return sd


def _write_reference(path: Path, state: dict, cfg=None) -> Path:
    torch.save({"epoch": 7, "model_state": state, "optimizer_state": {}, "cfg": cfg}, path)
    return path


def test_reference_round_trip_and_tower(tmp_path: Path) -> None:
    state = _reference_state()
    path = _write_reference(tmp_path / "ref.pyth", state, cfg="MODEL:\n  MERGE_BEFORE: false\n")
    head, tower, info = load_reference_checkpoint(path)
    assert isinstance(head, CLIPFSARHead) and not head.training and head.adapter is None
    assert info["dim"] == D and info["ffn_dim"] == FFN and info["epoch"] == 7
    assert head.merge_before is False and info["merge_before_source"] == "cfg"
    params = dict(head.named_parameters())
    assert len(params) == 12
    for key, value in state.items():
        if key.startswith("head.backbone."):
            assert torch.equal(tower["visual." + key[len("head.backbone.") :]], value)
        else:
            assert torch.equal(params[reference_key_to_fsar(key)].detach(), value)
    assert set(tower) == {
        "visual.conv1.weight",
        "visual.ln_post.weight",
        "visual.transformer.resblocks.0.attn.in_proj_weight",
    }


def test_reference_without_backbone_and_module_prefix(tmp_path: Path) -> None:
    state = {"module." + k: v for k, v in _reference_state(1, backbone=False).items()}
    head, tower, info = load_reference_checkpoint(_write_reference(tmp_path / "r.pyth", state))
    assert tower is None and info["merge_before_source"] == "default" and head.merge_before


def test_untrusted_pickle_is_refused_then_loads_with_trust(tmp_path: Path) -> None:
    path = _write_reference(tmp_path / "evil.pyth", _reference_state(2), cfg=NotAllowed())
    with pytest.raises(CheckpointError, match="--trust"):
        load_reference_checkpoint(path)
    head, tower, info = load_reference_checkpoint(path, trust=True)
    assert info["dim"] == D and tower is not None
    # fsar's own loader refuses it the same way
    torch.save({"format": "fsar-head", "x": NotAllowed()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_head_checkpoint(tmp_path / "evil.pt")


def test_bad_files_raise_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_reference_checkpoint(tmp_path / "missing.pyth")
    (tmp_path / "junk.pyth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_reference_checkpoint(tmp_path / "junk.pyth")
    with pytest.raises(CheckpointError, match="could not be unpickled"):
        load_reference_checkpoint(tmp_path / "junk.pyth", trust=True)
    torch.save({"model_state": {"head.other": torch.ones(1)}}, tmp_path / "empty.pyth")
    with pytest.raises(CheckpointError, match="no CLIP-FSAR Transformer"):
        load_reference_checkpoint(tmp_path / "empty.pyth")
    ref = _write_reference(tmp_path / "ref.pyth", _reference_state(3))
    with pytest.raises(CheckpointError, match="import-checkpoint"):
        load_head_checkpoint(ref)


@pytest.mark.parametrize("name", ["clipfsar", "clipfsar-notext", "otam"])
def test_fsar_checkpoint_round_trip(tmp_path: Path, name: str) -> None:
    head = create_head(name, D, ModelCfg(num_heads=4, ffn_dim=FFN, adapter_hidden=8))
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p))
    extra = {"step": 5, "acc": 0.5, "recipe": {"name": "x", "list": [1, 2.0, "a", None]}}
    out = save_head_checkpoint(tmp_path / "sub" / "best.pt", head, extra)
    assert out.is_file() and not list(out.parent.glob(".*tmp*"))
    raw = torch.load(out, weights_only=True)  # plain types only
    assert raw["head"] == name
    loaded, extra2 = load_head_checkpoint(out)
    assert loaded.name == name and type(loaded) is type(head) and extra2 == extra
    assert loaded.init_kwargs == head.init_kwargs
    for (k1, v1), (k2, v2) in zip(
        head.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k1 == k2 and torch.equal(v1, v2)


def test_save_rejects_non_plain_extra(tmp_path: Path) -> None:
    head = create_head("proto", D)
    with pytest.raises(CheckpointError, match="NotAllowed"):
        save_head_checkpoint(tmp_path / "x.pt", head, {"bad": NotAllowed()})
    assert not (tmp_path / "x.pt").exists()


def test_import_checkpoint_cli(tmp_path: Path) -> None:
    from fsar_cli.cli.app import app

    state = _reference_state(4)
    ref = _write_reference(tmp_path / "ref.pyth", state)
    out = tmp_path / "conv" / "head.pt"
    result = CliRunner().invoke(app, ["import-checkpoint", str(ref), str(out)])
    assert result.exit_code == 0, result.output
    assert "D=16" in result.output and "3 tensors" in result.output
    head, extra = load_head_checkpoint(out)
    assert torch.equal(
        head.transformer.to_q.weight.detach(), state["head.context2.layers.0.0.fn.to_q.weight"]
    )
    assert extra["epoch"] == 7
    tower = torch.load(tower_path_for(out), weights_only=True)
    assert tower_path_for(out).name == "head.visual.pt"
    assert torch.equal(tower["visual.conv1.weight"], state["head.backbone.conv1.weight"])

    # untrusted file: exit 1 with the reason; --trust converts it
    evil = _write_reference(tmp_path / "evil.pyth", state, cfg=NotAllowed())
    bad = CliRunner().invoke(app, ["import-checkpoint", str(evil), str(tmp_path / "e.pt")])
    assert bad.exit_code == 1 and "--trust" in bad.output
    assert not (tmp_path / "e.pt").exists()
    ok = CliRunner().invoke(
        app, ["import-checkpoint", str(evil), str(tmp_path / "e.pt"), "--trust"]
    )
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "e.pt").is_file()


def test_import_library_result(tmp_path: Path) -> None:
    ref = _write_reference(tmp_path / "ref.pyth", _reference_state(5, backbone=False))
    res = import_reference_checkpoint(ref, tmp_path / "h.pt")
    assert res.tower_out is None and not tower_path_for(tmp_path / "h.pt").exists()
    assert res.num_params == sum(v.numel() for v in _reference_state(5, backbone=False).values())
