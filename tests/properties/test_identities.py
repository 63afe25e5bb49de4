"""Property-based tests (hypothesis) for identities that hold on any input: few examples, derandomized, no deadline."""
import itertools
import math

import jax.numpy as jnp
import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from jax_cat.data.pipeline import PromptCollator
from jax_cat.data.pipeline import left_pad as pipeline_left_pad
from jax_cat.losses.strategies import BestOfN, MajorityAtN, PassAtN
from jax_cat.sampling.engine import left_pad as engine_left_pad
from merging.sparsify import dots_sparsify, num_kept, topk
from merging.task_vectors import combine, task_vector

FAST = settings(max_examples=25, deadline=None, derandomize=True, database=None)
SLOW = settings(max_examples=12, deadline=None, derandomize=True, database=None)  # each example compiles


def _family(rng, shapes, dtype):
    """(base, fine-tuned) trees: per tensor a scale in {1e-3, 1, 30}, the fine-tune moves each weight by ~1 %."""
    base, ft = {}, {}
    for i, s in enumerate(shapes):
        b = rng.standard_normal(s) * rng.choice([1e-3, 1.0, 30.0])
        base[f"w{i}"] = jnp.asarray(b, dtype)
        ft[f"w{i}"] = jnp.asarray(b * (1 + 0.01 * rng.standard_normal(s)), dtype)
    return base, ft


shapes_st = st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), min_size=1, max_size=3)


# ------------------------------------------------------------------------------------------- task vectors
@SLOW
@given(seed=st.integers(0, 2**31 - 1), shapes=shapes_st)
def test_combine_of_one_task_vector_gives_the_finetuned_model(seed, shapes):
    """base + 1 * (ft - base) == ft: exactly for bf16 weights (tau kept in float32: the difference of two nearby bf16
    numbers is exact there), within 2 ulp in float32 (two roundings)."""
    rng = np.random.default_rng(seed)
    base, ft = _family(rng, shapes, jnp.bfloat16)
    out = combine(base, [task_vector(ft, base, dtype=jnp.float32)], [1.0])
    for name in ft:
        assert out[name].dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(out[name], np.float32), np.asarray(ft[name], np.float32))
    base32, ft32 = _family(rng, shapes, jnp.float32)
    out32 = combine(base32, [task_vector(ft32, base32)], [1.0])
    for name in ft32:
        b, f = np.asarray(base32[name]), np.asarray(ft32[name])
        ulp = np.spacing(np.maximum(np.abs(b), np.abs(f)).astype(np.float32))
        assert np.all(np.abs(np.asarray(out32[name]) - f) <= 2 * ulp)


# ------------------------------------------------------------------------------------------- sparsification
@SLOW
@given(seed=st.integers(0, 2**31 - 1), shapes=shapes_st, density=st.floats(0.05, 1.0))
def test_topk_keeps_the_stated_density_and_dots_keeps_the_norm(seed, shapes, density):
    """On tie-free tensors (every |x| distinct), per-tensor top-k keeps exactly floor(density * n) entries, the
    largest ones; DoTS' rescale then gives the sparse vector the dense vector's L2 norm."""
    rng = np.random.default_rng(seed)
    tau = {f"w{i}": jnp.asarray(rng.standard_normal(s), jnp.float32) for i, s in enumerate(shapes)}
    assume(sum(num_kept(density, x.size) for x in tau.values()) > 0)  # nothing kept: no norm to restore
    for x in tau.values():
        assume(len(np.unique(np.abs(np.asarray(x)))) == x.size and np.all(np.asarray(x) != 0))
    kept = topk(tau, density)
    for name, x in tau.items():
        x, k = np.asarray(x), np.asarray(kept[name])
        n_keep = num_kept(density, x.size)
        assert np.count_nonzero(k) == n_keep
        largest = np.sort(np.abs(x).ravel())[::-1][:n_keep]
        np.testing.assert_array_equal(np.sort(np.abs(k[k != 0]))[::-1], largest)
        np.testing.assert_array_equal(k[k != 0], x[k != 0])  # kept entries are unchanged (no rescale)
    dots = dots_sparsify(tau, density)
    dense = math.sqrt(sum(float(np.sum(np.asarray(x, np.float64) ** 2)) for x in tau.values()))
    sparse = math.sqrt(sum(float(np.sum(np.asarray(x, np.float64) ** 2)) for x in dots.values()))
    assert math.isclose(sparse, dense, rel_tol=1e-5)
    for name in tau:
        assert np.count_nonzero(np.asarray(dots[name])) == num_kept(density, tau[name].size)


# ------------------------------------------------------------------------------------------- estimators
pool_st = st.lists(st.sampled_from(["a", "b", "c", None]), min_size=1, max_size=7)


def _subsets(m, k):
    return list(itertools.combinations(range(m), k))


@FAST
@given(answers=pool_st, data=st.data())
def test_estimators_equal_brute_force_over_subsets(answers, data):
    """pass@k, maj@k and bon@k from one pool equal the average over every k-subset (answer "a" is correct)."""
    m = len(answers)
    k = data.draw(st.integers(1, m))
    scores = np.array(data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0]), min_size=m, max_size=m)))
    correct = np.array([a == "a" for a in answers], float)
    subsets = _subsets(m, k)

    def plurality(subset):
        votes = {}
        for i in subset:
            if answers[i] is not None:
                votes[answers[i]] = votes.get(answers[i], 0) + 1
        if not votes:
            return 0.0
        top = max(votes.values())
        winners = [a for a, v in votes.items() if v == top]
        return winners.count("a") / len(winners)

    def best(subset):
        top = max(scores[i] for i in subset)
        return float(np.mean([correct[i] for i in subset if scores[i] == top]))

    brute_pass = np.mean([correct[list(s)].max() for s in subsets])
    brute_maj = np.mean([plurality(s) for s in subsets])
    brute_bon = np.mean([best(s) for s in subsets])
    assert math.isclose(PassAtN(k).estimate(correct), brute_pass, abs_tol=1e-12)
    assert math.isclose(MajorityAtN(k).estimate(correct, answers=answers), brute_maj, abs_tol=1e-12)
    assert math.isclose(BestOfN(k).estimate(correct, scores=scores), brute_bon, abs_tol=1e-12)


# ------------------------------------------------------------------------------------------- padding / collation
seqs_st = st.lists(st.lists(st.integers(1, 50), max_size=6), min_size=1, max_size=5)


@FAST
@given(seqs=seqs_st, extra=st.integers(0, 3), pad=st.integers(0, 60))
def test_left_pad_round_trips(seqs, extra, pad):
    """Both left_pads: the masked tokens of each row are the sequence, right-aligned; the rest is the pad id."""
    length = max(len(s) for s in seqs) + extra
    for ids, mask in (pipeline_left_pad(seqs, max_len=length, pad_id=pad), engine_left_pad(seqs, length, pad)):
        mask = np.asarray(mask).astype(bool)
        assert ids.shape == mask.shape == (len(seqs), length)
        for row, seq in enumerate(seqs):
            assert ids[row][mask[row]].tolist() == seq
            assert mask[row].tolist() == [False] * (length - len(seq)) + [True] * len(seq)
            assert (ids[row][~mask[row]] == pad).all()


class _CharTokenizer:
    chat_template = None
    pad_token_id, bos_token_id, eos_token_id = 7, 5, 9

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [[5] * add_special_tokens + [20 + ord(c) - ord("a") for c in t] for t in texts]}

    def decode(self, ids):
        return "".join(chr(ord("a") + i - 20) for i in ids if i >= 20)


@FAST
@given(prompts=st.lists(st.text("abcdefgh", min_size=1, max_size=8), min_size=1, max_size=4))
def test_collation_round_trips(prompts):
    tokenizer = _CharTokenizer()
    batch = PromptCollator(tokenizer, max_prompt_len=9)([{"prompt": p, "answer": i} for i, p in enumerate(prompts)])
    mask = batch["attention_mask"].astype(bool)
    assert [tokenizer.decode(row[m]) for row, m in zip(batch["input_ids"], mask)] == prompts
    assert all(row[m][0] == 5 and m[-1] for row, m in zip(batch["input_ids"], mask))  # BOS first, right-aligned
    assert batch["answer"] == list(range(len(prompts)))
