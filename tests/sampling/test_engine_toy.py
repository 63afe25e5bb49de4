"""The decode loop's bookkeeping (EOS, lengths, stop strings, batching, keys) on a model whose outputs are hand-checkable."""
import jax
import numpy as np
import pytest

from jax_cat.sampling import generate, sample_tokens
from tests.sampling.toy_model import CharTokenizer, ToyLM, greedy_reference

V, EOS = 12, 2


def chain_model(eos_after: int = 8, noise: float = 0.0, seed: int = 0):
    """Greedy walks a -> b -> c -> ... (id t -> t+1) and emits EOS after id `eos_after`."""
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(V, V)) * noise
    for t in range(V):
        table[t, EOS if t == eos_after else min(t + 1, V - 1)] += 5.0
    pos_table = rng.normal(size=(64, V)) * noise
    return ToyLM(table, pos_table, eos_token_id=EOS), table, pos_table


def test_greedy_matches_reference_with_eos_and_padding():
    model, table, pos_table = chain_model(noise=1.0)
    tok = CharTokenizer(V)
    prompts = ["a", "bcd", "efghi", "e"]
    out = generate(model, tok, prompts, n=2, max_new_tokens=10, temperature=0.0)
    assert [len(c) for c in out] == [2, 2, 2, 2]
    for i, prompt in enumerate(prompts):
        ids = tok([prompt])["input_ids"][0]
        ref = greedy_reference(table, pos_table, ids, 10, {EOS})
        for j, comp in enumerate(out[i]):
            assert (comp.prompt_index, comp.sample_index) == (i, j)
            assert comp.tokens.tolist() == ref
            assert comp.finish_reason == ("eos" if ref[-1] == EOS else "length")
            assert comp.text == tok.decode([t for t in ref if t != EOS])
            # policy log-probs: log softmax of the raw logits at each chosen token
            toks, pos = [ids[-1]] + ref[:-1], range(len(ids) - 1, len(ids) - 1 + len(ref))
            expect = [jax.nn.log_softmax(table[t] + pos_table[p])[c] for t, p, c in zip(toks, pos, ref)]
            np.testing.assert_allclose(comp.logprobs, expect, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(comp.sample_logprobs, np.zeros(len(ref)))


def test_eos_stop_strings_and_length():
    model, _, _ = chain_model(eos_after=8)  # a..f then EOS: ids 3..8 then 2
    tok = CharTokenizer(V)
    (c,), = generate(model, tok, ["a"], max_new_tokens=20, temperature=0.0)
    assert c.tokens.tolist() == [4, 5, 6, 7, 8, EOS] and c.text == "bcdef" and c.finish_reason == "eos"
    assert c.length == 6 and c.logprobs.shape == (6,)
    (c,), = generate(model, tok, ["a"], max_new_tokens=3, temperature=0.0)
    assert c.tokens.tolist() == [4, 5, 6] and c.text == "bcd" and c.finish_reason == "length"
    (c,), = generate(model, tok, ["a"], max_new_tokens=20, temperature=0.0, stop=["xyz", "de"])
    # text stops before the stop string; tokens keep the ones that spelled it
    assert c.text == "bc" and c.tokens.tolist() == [4, 5, 6, 7] and c.finish_reason == "stop"
    assert c.logprobs.shape == (4,) and c.sample_logprobs.shape == (4,)
    (c,), = generate(model, tok, ["a"], max_new_tokens=20, temperature=0.0, eos_token_ids=[])
    assert c.finish_reason == "length" and c.length == 20


def test_sampling_is_seeded_and_independent_of_batching():
    model, _, _ = chain_model(noise=3.0, seed=1)
    tok = CharTokenizer(V)
    kw = dict(n=4, max_new_tokens=12, temperature=1.0, eos_token_ids=[])
    a = generate(model, tok, ["ab", "c"], seed=7, **kw)
    b = generate(model, tok, ["ab", "c"], seed=7, batch_size=3, **kw)  # 3 batches, one with filler rows
    c = generate(model, tok, ["c"], seed=7, **kw)
    d = generate(model, tok, ["ab", "c"], seed=8, **kw)
    toks = lambda out: [[x.tokens.tolist() for x in row] for row in out]
    assert toks(a) == toks(b)
    assert toks(a)[0] != toks(d)[0]
    # prompt index is part of the key: "c" as prompt 1 vs prompt 0 draws differently, but deterministically
    assert toks(generate(model, tok, ["c"], seed=7, **kw)) == toks(c)
    assert len({tuple(t) for t in toks(a)[0]}) > 1  # the n samples differ
    np.testing.assert_allclose([x.sample_logprobs for x in a[0]], [x.logprobs for x in a[0]], rtol=1e-5)


def test_sample_tokens_arrays_and_filler_rows():
    model, table, pos_table = chain_model(eos_after=6)
    ids = np.array([[0, 0, 1, 3], [1, 3, 4, 5]], np.int32)
    mask = ids != 0
    out = sample_tokens(model, ids, mask, max_new_tokens=6, temperature=0.0, eos_token_ids=[EOS], pad_token_id=0,
                        sample_mask=np.array([True, False]), key=jax.random.key(0))
    np.testing.assert_array_equal(out.tokens, [[4, 5, 6, EOS, 0, 0], [0] * 6])
    np.testing.assert_array_equal(out.lengths, [4, 0])
    np.testing.assert_array_equal(out.ended_with_eos, [True, False])
    assert float(np.abs(np.asarray(out.logprobs)[0, 4:]).sum()) == 0.0


def test_bad_arguments_are_named():
    model, _, _ = chain_model()
    tok = CharTokenizer(V)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, tok, ["a"], max_new_tokens=2, top_p=1.5)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, tok, ["a"], max_new_tokens=2, temperature=-1.0)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(model, tok, ["a", ""], max_new_tokens=2, add_special_tokens=False)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        generate(model, tok, ["a"], max_new_tokens=100)


def test_right_padded_prompts_are_refused():
    model, _, _ = chain_model()
    with pytest.raises(ValueError, match="left-padded"):
        sample_tokens(model, np.array([[3, 4, 0]]), np.array([[1, 1, 0]]), max_new_tokens=2)


def test_batch_size_caps_the_rows_decoded_together(monkeypatch):
    """5 rows with batch_size=5: one batch of 5 rows (not a power-of-two bucket of 8 beyond the cap)."""
    import jax_cat.sampling.engine as engine

    model, _, _ = chain_model(noise=1.0)
    tok = CharTokenizer(V)
    shapes = []
    real = engine.sample_tokens

    def spy(model, ids, mask, *, group_ids=None, **kw):
        shapes.append(len(ids) if group_ids is None else len(group_ids))
        return real(model, ids, mask, group_ids=group_ids, **kw)

    monkeypatch.setattr(engine, "sample_tokens", spy)
    kw = dict(n=5, max_new_tokens=4, temperature=1.0, seed=3, eos_token_ids=[])
    capped = generate(model, tok, ["ab"], batch_size=5, **kw)
    assert shapes == [5]
    shapes.clear()
    generate(model, tok, ["ab"], batch_size=3, **kw)
    assert shapes == [3, 3]  # 3 + 2 real rows (+1 filler)
    monkeypatch.undo()
    toks = lambda out: [[x.tokens.tolist() for x in row] for row in out]
    assert toks(capped) == toks(generate(model, tok, ["ab"], **kw))  # batching never changes the draws


def test_each_distinct_prompt_is_prefilled_once(monkeypatch):
    """n samples of a prompt share one prefill: the prompt batch holds the distinct prompts, not n copies."""
    import jax_cat.sampling.engine as engine

    model, _, _ = chain_model(noise=2.0, seed=2)
    tok = CharTokenizer(V)
    calls = []
    real = engine.sample_tokens

    def spy(model, ids, mask, *, group_ids=None, **kw):
        calls.append((len(ids), None if group_ids is None else np.asarray(group_ids).tolist()))
        return real(model, ids, mask, group_ids=group_ids, **kw)

    monkeypatch.setattr(engine, "sample_tokens", spy)
    kw = dict(max_new_tokens=6, temperature=1.0, seed=4, eos_token_ids=[])
    prompts = ["abc", "d", "efgh"]
    out = generate(model, tok, prompts, n=8, **kw)
    # rows sorted longest prompt first: efgh x8, abc x8, d x8, then 8 filler rows (bucket 32) repeating row 0
    assert calls == [(4, [0] * 8 + [1] * 8 + [2] * 8 + [0] * 8)]
    calls.clear()
    alone = [generate(model, tok, prompts[: i + 1], n=8, batch_size=8, **kw)[i] for i in range(3)]
    assert all(rows == 1 and row_prompt == [0] * 8 for rows, row_prompt in calls)  # one prefill row per batch
    calls.clear()
    generate(model, tok, prompts, n=1, **kw)
    assert calls == [(4, None)]  # all prompts distinct: nothing to share, no copy
    toks = lambda rows: [[c.tokens.tolist() for c in row] for row in rows]
    assert toks(out) == toks(alone)  # the draws depend on (seed, prompt, sample) only
