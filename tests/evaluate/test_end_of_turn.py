"""Evaluation stops a completion at the chat template's end-of-turn token as well as at EOS (issue 20, item 3).

A base model's tokenizer often ends turns with another token than its EOS (Qwen2.5: <|im_end|> vs <|endoftext|>);
transformers' generate stops at every id of an eos_token_id list. Here a toy model whose greedy path is known by
hand (a -> b -> c -> ... -> EOS) and a character tokenizer whose template ends assistant turns with "d" (id 6): the
reference completion is the greedy path cut at the first id in {EOS, 6} (`greedy_reference`).
"""
from __future__ import annotations

import numpy as np

from jax_cat.data import end_of_turn_ids, stop_token_ids
from jax_cat.evaluate import evaluate
from tests.sampling.toy_model import CharTokenizer, ToyLM, greedy_reference

V, EOS, END = 12, 2, 6  # END: "d"


class TemplatedCharTokenizer(CharTokenizer):
    """CharTokenizer with a chat template: a user turn is its text, an assistant turn its text then "d"."""

    chat_template = "toy: user text, assistant text + 'd'"

    def __call__(self, texts, add_special_tokens=True):
        if isinstance(texts, str):
            return {"input_ids": super().__call__([texts], add_special_tokens)["input_ids"][0]}
        return super().__call__(texts, add_special_tokens)

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        return "".join(m["content"] + ("d" if m["role"] == "assistant" else "") for m in messages)


def chain_model():
    """Greedy walks id t -> t + 1 from the prompt's last id and emits EOS after id 8 (a..f then EOS)."""
    table = np.zeros((V, V))
    for t in range(V):
        table[t, EOS if t == 8 else min(t + 1, V - 1)] += 5.0
    pos_table = np.zeros((64, V))
    return ToyLM(table, pos_table, eos_token_id=EOS), table, pos_table


def test_end_of_turn_ids_and_stop_ids_from_the_template():
    tok = TemplatedCharTokenizer(V)
    assert end_of_turn_ids(tok) == [END] and end_of_turn_ids(tok, use_chat_template=False) == []
    assert end_of_turn_ids(CharTokenizer(V)) == []  # no template
    assert stop_token_ids(None, tok) == (EOS, END)
    assert stop_token_ids(None, tok, use_chat_template=False) == (EOS,)


def test_evaluate_stops_at_end_of_turn_or_eos():
    model, table, pos_table = chain_model()
    tok = TemplatedCharTokenizer(V)
    problems = [{"prompt": "a", "answer": "bc"}, {"prompt": "g", "answer": "h"}]

    def reward(texts, golds):
        return [float(t == g) for t, g in zip(texts, golds)]

    kw = dict(n=2, ks=[1, 2], max_new_tokens=20, temperature=0.0, reward_fn=reward, metrics=["pass@k"],
              keep_samples=True, progress=False)
    templated = evaluate(model, tok, problems, **kw)
    assert templated["config"]["eos_token_ids"] == [EOS, END]
    for problem, row in zip(problems, templated["samples"]):
        ids = tok(problem["prompt"], add_special_tokens=False)["input_ids"]
        ref = greedy_reference(table, pos_table, ids, 20, {EOS, END})
        stopped = ref[-1] in (EOS, END)
        for sample in row:  # the text leaves the stop token out, the length counts it
            assert sample["length"] == len(ref)
            assert sample["finish_reason"] == ("eos" if stopped else "length")
            assert sample["text"] == tok.decode(ref[:-1] if stopped else ref)
    # "a": b, c, then "d" ends the turn (before this fix: on to f and EOS); "g" walks h, i, j, k, k, ... to the
    # length limit, passing neither
    assert [(s["text"], s["length"]) for s in templated["samples"][0]] == [("bc", 3)] * 2
    assert [s["finish_reason"] for s in templated["samples"][1]] == ["length"] * 2
    raw = evaluate(model, tok, problems, use_chat_template=False, **kw)
    assert raw["config"]["eos_token_ids"] == [EOS]
    assert [(s["text"], s["length"]) for s in raw["samples"][0]] == [("bcdef", 6)] * 2
    assert [s["finish_reason"] for s in raw["samples"][0]] == ["eos", "eos"]
