"""The clipfsar head reproduces the authors' implementation (shared/reference, D = 32) to ~1e-5.

Everything goes through the public API after ``load_reference_checkpoint``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fsar_cli.models import frame_distances, load_reference_checkpoint, reference_key_to_fsar

REF = Path(__file__).resolve().parents[2].parent / "shared" / "reference"
ATOL = 1e-5

pytestmark = pytest.mark.skipif(not REF.is_dir(), reason=f"reference outputs not found at {REF}")


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a))


@pytest.fixture(scope="module")
def head():
    head, tower, info = load_reference_checkpoint(REF / "clipfsar_head_d32.pyth")
    assert tower is None and info["dim"] == 32 and info["tower_keys"] == 0
    assert not head.training
    return head


@pytest.fixture(scope="module")
def eval_npz():
    return np.load(REF / "clipfsar_eval_d32.npz")


@pytest.mark.parametrize("ep", ["a", "b", "c"])
def test_eval_episode(head, eval_npz, ep: str) -> None:
    def g(key: str) -> torch.Tensor:
        return _t(eval_npz[f"{ep}_{key}"])

    text_test = _t(eval_npz["text_features_test"])
    text_train = _t(eval_npz["text_features_train"])
    support, labels, query = g("support_feats"), g("support_labels"), g("query_feats")
    class_text = text_test[g("batch_class_list")]  # [W, D], row j = text of episode label j
    shot = int(g("shot"))
    head.merge_before = bool(g("merge_before"))
    with torch.no_grad():
        logits = head.episode_logits(support, labels, query, class_text)
        q_enc = head.encode_query(query)
        # prototypes in episode-label order, as the reference's torch.unique(labels)
        order = torch.argsort(labels, stable=True)
        grouped = support[order].reshape(5, shot, 8, 32)[None]  # [1, W, K, T, D]
        protos = head.prototypes(grouped, class_text[None])[0]  # [W, T, D]
        class_logits = head.video_text_logits(torch.cat([support, query]), text_train)

    torch.testing.assert_close(logits, g("logits"), atol=ATOL, rtol=0)
    torch.testing.assert_close(q_enc, g("query_transformed"), atol=ATOL, rtol=0)
    torch.testing.assert_close(frame_distances(q_enc, protos), g("frame_dists"), atol=ATOL, rtol=0)
    torch.testing.assert_close(class_logits, g("class_logits"), atol=ATOL, rtol=0)
    torch.testing.assert_close(head.match(q_enc, protos), logits, atol=1e-6, rtol=0)

    ref_seq = g("support_transformer_out")  # [5, 9, 32]: per class (b) or per support (a, c)
    with torch.no_grad():
        if head.merge_before and shot > 1:
            enc = head.merged_prototypes(grouped, class_text[None])[0]  # [W, T, D]
            seq = torch.cat(
                [support[order].reshape(5, shot, 8, 32).mean(1), class_text[:, None]], 1
            )
        else:
            enc = head.encode_support(support, class_text[labels])  # [N_s, T, D], stored order
            seq = torch.cat([support, class_text[labels][:, None]], 1)
        full = head.transformer(seq)  # [5, T+1, D], the text token's output included
    torch.testing.assert_close(enc, ref_seq[:, :8], atol=ATOL, rtol=0)
    torch.testing.assert_close(full, ref_seq, atol=ATOL, rtol=0)


def test_train_episode_losses_and_gradients(head) -> None:
    z = np.load(REF / "clipfsar_train_d32.npz")

    def g(key: str) -> torch.Tensor:
        return _t(z[key])

    text_train = g("text_features_train")
    class_text = text_train[g("batch_class_list")]
    video_labels = torch.cat([g("real_support_labels"), g("real_query_labels")])
    head.merge_before = True  # 1-shot: either order gives the same prototypes
    head.zero_grad()
    out = head.episode_loss(
        g("support_feats"),
        g("support_labels"),
        g("query_feats"),
        g("query_labels"),
        class_text,
        video_labels,
        text_train,
        float(g("lambda_vt")),
    )
    batch_size = int(g("batch_size"))
    (out["loss"] / batch_size).backward()  # the reference divides per iteration

    torch.testing.assert_close(out["logits"], g("logits"), atol=ATOL, rtol=0)
    with torch.no_grad():
        videos = torch.cat([g("support_feats"), g("query_feats")])
        torch.testing.assert_close(
            head.video_text_logits(videos, text_train), g("class_logits"), atol=ATOL, rtol=0
        )
    for key in ("ce_fewshot", "ce_videotext"):
        torch.testing.assert_close(out[key].detach(), g(key), atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(out["loss"].detach(), g("loss_undivided"), atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(out["loss"].detach() / batch_size, g("loss"), atol=ATOL, rtol=1e-5)

    params = dict(head.named_parameters())
    grad_keys = [k for k in z.files if k.startswith("grad__")]
    assert len(grad_keys) == len(params) == 12
    for key in grad_keys:
        name = reference_key_to_fsar(key[len("grad__") :])
        want = g(key)
        got = params[name].grad
        assert got is not None, name
        scale = want.abs().max().item()
        torch.testing.assert_close(got, want, atol=1e-5 * max(scale, 1e-3), rtol=1e-4, msg=name)
    head.zero_grad()
