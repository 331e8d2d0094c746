"""``--precision bf16``: the head's matrix products in bfloat16, matching in float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fsar_cli.episodes import EpisodeSampler
from fsar_cli.errors import FsarError
from fsar_cli.evaluation.batched import episode_accuracies, episode_logits
from fsar_cli.features.synthetic import synthetic_store
from fsar_cli.models import create_head
from fsar_cli.models.precision import check_precision, compute_precision
from fsar_cli.recipe import ModelCfg


def test_unknown_precision_is_one_clear_line() -> None:
    assert check_precision("bf16") == "bf16"
    with pytest.raises(FsarError, match="precision 'fp16' is not one of fp32, bf16"):
        check_precision("fp16")


def test_bf16_evaluation_changes_few_decisions(tmp_path: Path) -> None:
    store = synthetic_store(tmp_path / "test", 8, 8, dim=32, noise=2.5)
    batch = EpisodeSampler(store.labels, 5, 1, 3, seed=0).sample(60)
    torch.manual_seed(0)
    head = create_head("clipfsar", 32, ModelCfg(num_heads=4, ffn_dim=64))
    fp32 = episode_logits(head, store.features, store.text, batch)
    with compute_precision("bf16", "cpu"):
        bf16 = episode_logits(head, store.features, store.text, batch)
        accs = episode_accuracies(head, store.features, store.text, batch)
    assert bf16.dtype == np.float32 and not np.array_equal(bf16, fp32)  # really bf16 inside
    assert (bf16.argmax(-1) != fp32.argmax(-1)).mean() < 0.1
    ref = episode_accuracies(head, store.features, store.text, batch)
    assert abs(accs.mean() - ref.mean()) < 0.05
