"""grain prompt pipelines: fixed-shape left padding, seeded order, disjoint shards, exact resumption."""
import numpy as np
import pytest

from jax_cat.data import ArithmeticTask, left_pad, pad_token_id, prompt_pipeline, resolve_pad_token_id

RECORDS = [{"prompt": f"{i}+{i}=", "answer": str(2 * i), "level": 1, "id": f"r{i}"} for i in range(20)]


def _ids(ds, limit=None):
    out = []
    for i, batch in enumerate(ds):
        if limit is not None and i >= limit:
            break
        out.append(batch["id"])
    return out


def test_left_pad_by_hand():
    ids, mask = left_pad([[5, 6, 7], [8], []], max_len=4, pad_id=0)
    np.testing.assert_array_equal(ids, [[0, 5, 6, 7], [0, 0, 0, 8], [0, 0, 0, 0]])
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]])
    assert ids.dtype == mask.dtype == np.int32
    with pytest.raises(ValueError, match="prompt long has 3 tokens > max_prompt_len=2"):
        left_pad([[1, 2, 3]], max_len=2, pad_id=0, names=["long"])
    ids, mask = left_pad([[1, 2, 3]], max_len=2, pad_id=0, truncate=True)
    np.testing.assert_array_equal(ids, [[2, 3]])


def test_batches_are_fixed_shape_left_padded_tokens(chat_tokenizer, plain_tokenizer):
    ds = prompt_pipeline(RECORDS, plain_tokenizer, batch_size=4, max_prompt_len=8, shuffle=False,
                         shard_index=0, shard_count=1)
    batch = next(iter(ds))
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (4, 8)
    assert batch["input_ids"].dtype == np.int32
    assert batch["id"] == ["r0", "r1", "r2", "r3"] and batch["answer"] == ["0", "2", "4", "6"]
    bos, pad = plain_tokenizer.bos_token_id, plain_tokenizer.pad_token_id
    expected = [bos] + plain_tokenizer("0+0=", add_special_tokens=False)["input_ids"]  # no template: <bos> added
    np.testing.assert_array_equal(batch["input_ids"][0], [pad] * (8 - len(expected)) + expected)
    np.testing.assert_array_equal(batch["attention_mask"][0], [0] * (8 - len(expected)) + [1] * len(expected))

    ds = prompt_pipeline(RECORDS, chat_tokenizer, batch_size=2, max_prompt_len=24, shuffle=False,
                         shard_index=0, shard_count=1)
    batch = next(iter(ds))
    assert batch["text"][1] == "<bos><|user|>1+1=\n<|assistant|>"
    row, mask = batch["input_ids"][1], batch["attention_mask"][1].astype(bool)
    assert chat_tokenizer.decode(row[mask]) == batch["text"][1]  # template's own <bos>, no second one
    assert (row[~mask] == chat_tokenizer.pad_token_id).all() and mask[-1]


def test_overflow_raises_naming_the_record(plain_tokenizer):
    ds = prompt_pipeline(RECORDS, plain_tokenizer, batch_size=20, max_prompt_len=5, shuffle=False,
                         shard_index=0, shard_count=1)
    with pytest.raises(ValueError, match="prompt r10 has 7 tokens > max_prompt_len=5"):
        next(iter(ds))


def test_seeded_order_epochs_and_shards(plain_tokenizer):
    def make(**kw):
        kw.setdefault("shard_index", 0)
        kw.setdefault("shard_count", 1)
        return prompt_pipeline(RECORDS, plain_tokenizer, batch_size=2, max_prompt_len=8, **kw)

    first = _ids(make(seed=3))
    assert first == _ids(make(seed=3))  # same seed, same order
    assert first != _ids(make(seed=4))
    flat = [i for b in first for i in b]
    assert sorted(flat) == sorted(r["id"] for r in RECORDS) and flat != [r["id"] for r in RECORDS]

    two_epochs = [i for b in _ids(make(seed=3, num_epochs=2)) for i in b]
    assert two_epochs[:20] == flat and sorted(two_epochs[20:]) == sorted(flat) and two_epochs[20:] != flat

    for epochs in (1, 3):
        shards = [[i for b in _ids(make(seed=3, num_epochs=epochs, shard_index=s, shard_count=2)) for i in b]
                  for s in (0, 1)]
        assert len(shards[0]) == len(shards[1]) == 10 * epochs
        for e in range(epochs):  # within each epoch: disjoint and together the whole data
            a, b = set(shards[0][10 * e : 10 * (e + 1)]), set(shards[1][10 * e : 10 * (e + 1)])
            assert not a & b and a | b == {r["id"] for r in RECORDS}

    # uneven: 20 records over 3 shards -> 6 each, 2 dropped per epoch
    shards = [[i for b in _ids(make(seed=3, shard_index=s, shard_count=3)) for i in b] for s in range(3)]
    assert [len(s) for s in shards] == [6, 6, 6] and len(set().union(*map(set, shards))) == 18


def test_default_shard_is_the_jax_process(plain_tokenizer):
    ds = prompt_pipeline(RECORDS, plain_tokenizer, batch_size=5, max_prompt_len=8, seed=1)  # process 0 of 1
    assert sorted(i for b in _ids(ds) for i in b) == sorted(r["id"] for r in RECORDS)


def test_resume_from_iterator_state(plain_tokenizer):
    task = ArithmeticTask("sum3", test_size=10)

    def make():
        return prompt_pipeline(task.source("train", 1000), plain_tokenizer, batch_size=8, max_prompt_len=13, seed=5,
                               num_epochs=None, shard_index=1, shard_count=2)

    it = iter(make())
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(4)]
    fresh = iter(make())
    fresh.set_state(state)
    for want in expected:
        got = next(fresh)
        np.testing.assert_array_equal(got["input_ids"], want["input_ids"])
        assert got["id"] == want["id"] and got["answer"] == want["answer"]
    assert expected[0]["input_ids"].shape == (8, 13)


def test_arithmetic_stream_unshuffled_is_problem_order(plain_tokenizer):
    task = ArithmeticTask("sum3", test_size=10)
    ds = prompt_pipeline(task.source("train", 10**6), plain_tokenizer, batch_size=4, max_prompt_len=13,
                         shuffle=False, num_epochs=None, shard_index=0, shard_count=1)
    batch = next(iter(ds))
    assert batch["prompt"] == [task.problem(i)["prompt"] for i in range(4)]


def test_left_pad_both_call_styles_match_the_hf_tokenizer_pad():
    """Positional (the old sampler style) and keyword (the old pipeline style) calls give the same int32 arrays,
    equal to what the HF tokenizer's own left padding writes."""
    from jax_cat.models.tiny import build_char_tokenizer

    tok = build_char_tokenizer()
    lists = tok(["12+3=", "7", "100-99="], add_special_tokens=False)["input_ids"]
    ids, mask = left_pad(lists, 8, tok.pad_token_id)
    ids_kw, mask_kw = left_pad(lists, max_len=8, pad_id=tok.pad_token_id)
    np.testing.assert_array_equal(ids, ids_kw)
    np.testing.assert_array_equal(mask, mask_kw)
    ref = tok.pad({"input_ids": lists}, padding="max_length", max_length=8, return_tensors="np")
    assert tok.padding_side == "left"
    np.testing.assert_array_equal(ids, ref["input_ids"])
    np.testing.assert_array_equal(mask, ref["attention_mask"])
    assert ids.dtype == mask.dtype == np.int32
    with pytest.raises(TypeError, match="disagree"):
        left_pad(lists, 8, 0, pad_id=1)


class _Tok:
    def __init__(self, pad=None, eos=None):
        self.pad_token_id, self.eos_token_id = pad, eos


class _Model:
    def __init__(self, pad=None, eos=None):
        self.config = _Tok(pad, eos)


def test_one_pad_rule():
    """tokenizer pad > model config pad > first EOS (tokenizer's, then the config's) > 0; one rule for every caller."""
    assert resolve_pad_token_id(_Model(pad=5), _Tok(pad=3)) == 3
    assert resolve_pad_token_id(_Model(pad=5), _Tok(eos=2)) == 5
    assert resolve_pad_token_id(_Model(eos=[7, 8]), _Tok()) == 7
    assert resolve_pad_token_id(_Model(eos=9), _Tok(eos=[4, 9])) == 4
    assert resolve_pad_token_id(_Model(), _Tok(), (11,)) == 11  # explicit EOS ids (old positional call style)
    assert resolve_pad_token_id(_Model(), _Tok()) == 0
    assert pad_token_id(_Tok(eos=[4, 9])) == 4 and pad_token_id(_Tok(pad=1, eos=4)) == 1 and pad_token_id(_Tok()) == 0


def test_data_seed_is_the_shuffle_seed(plain_tokenizer):
    make = lambda **kw: _ids(prompt_pipeline(RECORDS, plain_tokenizer, batch_size=2, max_prompt_len=8, shard_index=0,
                                             shard_count=1, **kw))
    assert make(data_seed=3) == make(seed=3) != make(data_seed=4)
    with pytest.raises(ValueError, match="disagree"):
        make(data_seed=3, seed=4)
