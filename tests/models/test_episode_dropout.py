"""Per-episode dropout: an episode's masks depend only on its own generator, not on its batch."""

from __future__ import annotations

import pytest
import torch

from fsar_cli.models import create_head
from fsar_cli.models.transformer import EpisodeDropout, TemporalTransformer, episode_dropout
from fsar_cli.recipe import ModelCfg
from fsar_cli.train.rng import episode_generators

CPU = torch.device("cpu")


def test_an_episode_gets_the_same_masks_alone_or_in_any_batch() -> None:
    torch.manual_seed(0)
    layer = TemporalTransformer(16, num_heads=4, ffn_dim=32, attn_dropout=0.3, ffn_dropout=0.3)
    layer.train()
    x = torch.randn(5, 3, 9, 16)  # 5 episodes x 3 sequences x 9 tokens
    with episode_dropout(episode_generators(7, 2, range(10, 15), CPU)):
        whole = layer(x)
    parts = []
    for a, b in ((0, 2), (2, 3), (3, 5)):  # the shares of 3 ranks
        with episode_dropout(episode_generators(7, 2, range(10 + a, 10 + b), CPU)):
            parts.append(layer(x[a:b]))
    torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=1e-6)
    # the masks are real: another step draws other masks, eval mode none
    with episode_dropout(episode_generators(7, 3, range(10, 15), CPU)):
        assert not torch.allclose(layer(x), whole)
    layer.eval()
    with episode_dropout(episode_generators(7, 2, range(10, 15), CPU)):
        torch.testing.assert_close(layer(x), layer(x))


def test_episode_dropout_keeps_the_expected_fraction_and_scale() -> None:
    drop = EpisodeDropout(0.25).train()
    x = torch.ones(4, 10_000)
    with episode_dropout(episode_generators(0, 0, range(4), CPU)):
        y = drop(x)
    assert abs((y == 0).float().mean().item() - 0.25) < 0.02
    assert torch.all((y == 0) | torch.isclose(y, torch.tensor(1 / 0.75)))
    with pytest.raises(ValueError, match="3 generators for a batch of leading size 4"):
        with episode_dropout(episode_generators(0, 0, range(3), CPU)):
            drop(x)


def test_head_losses_of_split_batches_match_the_whole_batch() -> None:
    """What ranks compute: the loss of a share equals that share's part of the whole batch."""
    torch.manual_seed(1)
    head = create_head("clipfsar", 32, ModelCfg(num_heads=4, ffn_dim=64)).train()
    e, w = 4, 5
    s, q = torch.randn(e, w, 8, 32), torch.randn(e, w, 8, 32)
    labels = torch.arange(w).repeat(e, 1)
    text = torch.randn(e, w, 32)

    def logits(a: int, b: int) -> torch.Tensor:
        with episode_dropout(episode_generators(3, 0, range(a, b), CPU)):
            return head.batch_episode_logits(s[a:b], labels[a:b], q[a:b], text[a:b])

    torch.testing.assert_close(
        torch.cat([logits(0, 1), logits(1, 4)]), logits(0, 4), rtol=0, atol=1e-5
    )
