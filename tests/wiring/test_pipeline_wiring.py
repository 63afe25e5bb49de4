"""Pipeline wiring: padding uses the tokenizer's pad id (not 0), and an iterator resumes exactly from a state
taken after more than one full epoch (the epoch and its reshuffle are part of the state)."""
import numpy as np

from jax_cat.data import prompt_pipeline
from jax_cat.sampling.engine import left_pad as engine_left_pad

RECORDS = [{"prompt": "x" * (1 + i % 5), "answer": str(i), "id": f"r{i}"} for i in range(12)]
PAD = 7


class OddPadTokenizer:
    """One token per character (id 20 + position in the alphabet), BOS 5, pad 7, EOS 9: no id is 0."""

    chat_template = None
    pad_token_id, bos_token_id, eos_token_id = PAD, 5, 9

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [[5] * add_special_tokens + [20 + ord(c) - ord("a") for c in t] for t in texts]}


def test_pipeline_pads_with_the_tokenizers_pad_id():
    ds = prompt_pipeline(RECORDS, OddPadTokenizer(), batch_size=4, max_prompt_len=8, shuffle=False,
                         shard_index=0, shard_count=1)
    batch = next(iter(ds))
    ids, mask = batch["input_ids"], batch["attention_mask"].astype(bool)
    assert (ids[~mask] == PAD).all() and (~mask).any()
    np.testing.assert_array_equal(ids[0], [PAD] * 6 + [5, 43])  # "x" -> 20 + 23
    np.testing.assert_array_equal(ids[1], [PAD] * 5 + [5, 43, 43])


def test_sampler_left_pad_uses_the_pad_id():
    ids, mask = engine_left_pad([[4, 5, 6], [8]], 4, PAD)
    np.testing.assert_array_equal(ids, [[PAD, 4, 5, 6], [PAD, PAD, PAD, 8]])
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 0, 1]])


def test_resume_after_more_than_one_epoch():
    """12 records, batches of 4: 3 batches per epoch. The state is taken after 4 batches (epoch 2 started); the
    resumed iterator must continue epoch 2 (reshuffled) and then epoch 3 exactly like the original."""

    def make():
        return prompt_pipeline(RECORDS, OddPadTokenizer(), batch_size=4, max_prompt_len=8, seed=3, num_epochs=None,
                               shard_index=0, shard_count=1)

    it = iter(make())
    seen = [next(it)["id"] for _ in range(4)]
    state = it.get_state()
    expected = [next(it)["id"] for _ in range(5)]  # rest of epoch 2, then epoch 3
    # sanity on the fixture: epochs cover every record and reshuffle, so a lost epoch would show
    epoch1, epoch2 = seen[:3], [seen[3]] + expected[:2]
    assert sorted(sum(epoch1, [])) == sorted(sum(epoch2, [])) == sorted(r["id"] for r in RECORDS)
    assert epoch1 != epoch2
    resumed = iter(make())
    resumed.set_state(state)
    assert [next(resumed)["id"] for _ in range(5)] == expected
