"""Shared helpers for model tests: left-padded batches and transformers reference logits."""
from __future__ import annotations

import numpy as np


def left_padded_batch(vocab_size: int, lengths=(11, 7, 1), seed: int = 0, pad_id: int = 0):
    """Random token ids [B, T] left-padded with pad_id, and the 0/1 mask; token ids avoid the pad id."""
    rng = np.random.default_rng(seed)
    t = max(lengths)
    ids = np.full((len(lengths), t), pad_id, np.int32)
    mask = np.zeros((len(lengths), t), np.int32)
    for row, n in enumerate(lengths):
        ids[row, t - n :] = rng.integers(3, vocab_size, size=n)
        mask[row, t - n :] = 1
    return ids, mask


def torch_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Reference logits from a transformers model, positions = cumsum(mask) - 1 as for our model."""
    import torch

    positions = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(ids.astype(np.int64)),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
            position_ids=torch.from_numpy(positions.astype(np.int64)),
        )
    return out.logits.float().numpy()


def max_abs_diff_on_real_tokens(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """max |a - b| over positions holding real tokens (pad rows are garbage on both sides)."""
    real = mask.astype(bool)
    return float(np.max(np.abs(np.asarray(a)[real] - np.asarray(b)[real])))
