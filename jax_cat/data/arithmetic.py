"""A shipped, seeded generator of verifiable arithmetic problems of graded difficulty (the offline default task).

Problem ``i`` of a split is a pure function of ``(seed, split, i)``: its numpy Generator is seeded from that
tuple (SeedSequence hashing), so any worker can produce any problem without shared state. The held-out
test split is the first ``test_size`` *distinct* problems of the "test" stream; train problems whose prompt
is in the test set are redrawn (attempt 1, 2, ... of the same index), so train never shows a test prompt.

Operands: the digit count is drawn uniformly in ``[min_digits, max_digits]``, then the value uniformly among
numbers with that many digits (0-9 for one digit), so short numbers are as common as long ones. Operators
follow the usual precedence (``*`` before ``+``/``-``).

Styles:
  "plain"   the char-level format: ``012+345+006=`` -> ``0363`` (operands/answer zero-padded when the spec says);
  "natural" for chat models: "What is 12 + 345 + 6? ... \\boxed{}" -> ``363``, with a worked ``solution``.

Every problem is a dict ``{"prompt", "answer", "level", "id", "solution"}`` (``solution`` is the SFT target
completion: the answer itself in "plain" style, a sentence ending in ``\\boxed{answer}`` in "natural").
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np

Style = Literal["plain", "natural"]
_OPS = ("+", "-", "*")
NATURAL_INSTRUCTION = "Put your final answer within \\boxed{}."


@dataclass(frozen=True)
class ArithmeticSpec:
    """One difficulty setting: how many operands, how many digits each, which operators, how it is written."""

    num_operands: int = 3
    min_digits: int = 1
    max_digits: int = 3
    ops: tuple[str, ...] = ("+",)
    pad_operands: bool = False  # write every operand with max_digits digits (leading zeros)
    answer_width: int | None = None  # zero-pad the answer to this width (only for non-negative answers)
    level: int = 0  # 1..6 on the graded ladder, 0 for presets outside it
    name: str = "custom"

    def __post_init__(self) -> None:
        if self.num_operands < 2:
            raise ValueError(f"ArithmeticSpec({self.name}): num_operands must be >= 2, got {self.num_operands}")
        if not 1 <= self.min_digits <= self.max_digits <= 9:
            raise ValueError(
                f"ArithmeticSpec({self.name}): need 1 <= min_digits <= max_digits <= 9, "
                f"got {self.min_digits}, {self.max_digits}"
            )
        if not self.ops or any(op not in _OPS for op in self.ops):
            raise ValueError(f"ArithmeticSpec({self.name}): ops must be a non-empty subset of {_OPS}, got {self.ops}")
        if self.answer_width is not None:
            if set(self.ops) != {"+"}:
                raise ValueError(f"ArithmeticSpec({self.name}): answer_width needs ops=('+',) (answers must be >= 0)")
            largest = self.num_operands * (10**self.max_digits - 1)
            if len(str(largest)) > self.answer_width:
                raise ValueError(
                    f"ArithmeticSpec({self.name}): answer_width={self.answer_width} cannot hold the largest sum {largest}"
                )

    @property
    def num_distinct_prompts(self) -> int:
        """How many different prompts this spec can produce (bounds the held-out set size)."""
        values = 10**self.max_digits - (10 ** (self.min_digits - 1) if self.min_digits > 1 else 0)
        return values**self.num_operands * len(self.ops) ** (self.num_operands - 1)


# The graded ladder: operands 2 -> 5, digits up to 1 -> 4, operators + -> +,- -> +,-,*.
LEVELS: dict[int, ArithmeticSpec] = {
    1: ArithmeticSpec(2, 1, 1, ("+",), level=1, name="level1"),
    2: ArithmeticSpec(2, 1, 2, ("+", "-"), level=2, name="level2"),
    3: ArithmeticSpec(3, 1, 2, ("+", "-"), level=3, name="level3"),
    4: ArithmeticSpec(3, 1, 3, ("+", "-", "*"), level=4, name="level4"),
    5: ArithmeticSpec(4, 1, 3, ("+", "-", "*"), level=5, name="level5"),
    6: ArithmeticSpec(5, 1, 4, ("+", "-", "*"), level=6, name="level6"),
}

PRESETS: dict[str, ArithmeticSpec] = {
    # The measured default for the tiny char-level model (shared/notes/cat-feasibility.md):
    # three numbers of 1-3 digits written with leading zeros, answer as 4 digits: "012+345+006=" -> "0363".
    "sum3": ArithmeticSpec(3, 1, 3, ("+",), pad_operands=True, answer_width=4, level=0, name="sum3"),
    # The embedded default run's task (jax_cat.training.default_run): three numbers of 1-2 digits with leading
    # zeros, answer as 3 digits: "12+05+67=" -> "084". The 108k-param RoPE model gets a warm start with pass@1 ~0.06
    # and pass@32 ~0.87 from 1,000 SFT steps (sum3 needs 2,500+ steps for a weaker one, pass@1 0.04).
    "sum3_2d": ArithmeticSpec(3, 1, 2, ("+",), pad_operands=True, answer_width=3, level=0, name="sum3_2d"),
    # Two numbers of 1-2 digits with leading zeros, answer as 3 digits: "12+05=" -> "017" (issue 21's search for a
    # regime where RL sharpens: an easier sum whose most likely answer is often right while sampling still misses).
    "sum2_2d": ArithmeticSpec(2, 1, 2, ("+",), pad_operands=True, answer_width=3, level=0, name="sum2_2d"),
    **{spec.name: spec for spec in LEVELS.values()},
}


def get_spec(spec: str | int | ArithmeticSpec) -> ArithmeticSpec:
    """A spec from a preset name ("sum3", "level3"), a ladder level (3) or a spec itself."""
    if isinstance(spec, ArithmeticSpec):
        return spec
    if isinstance(spec, int) and not isinstance(spec, bool):
        if spec not in LEVELS:
            raise ValueError(f"arithmetic level must be one of {sorted(LEVELS)}, got {spec}")
        return LEVELS[spec]
    if isinstance(spec, str) and spec in PRESETS:
        return PRESETS[spec]
    raise ValueError(f"unknown arithmetic preset {spec!r}; choose from {sorted(PRESETS)} or levels {sorted(LEVELS)}")


def _split_code(split: str) -> int:
    return zlib.crc32(split.encode("utf-8"))


def _rng(seed: int, split: str, index: int, attempt: int) -> np.random.Generator:
    if seed < 0 or index < 0:
        raise ValueError(f"arithmetic: seed and index must be >= 0, got seed={seed}, index={index}")
    return np.random.default_rng([seed, _split_code(split), index, attempt])


def _draw_operand(rng: np.random.Generator, spec: ArithmeticSpec) -> int:
    digits = int(rng.integers(spec.min_digits, spec.max_digits + 1))
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return int(rng.integers(low, 10**digits))


def _evaluate(operands: Sequence[int], ops: Sequence[str]) -> int:
    """Left-to-right with * binding tighter than + and -, in exact integers."""
    terms: list[int] = [operands[0]]
    signs: list[int] = [1]
    for op, value in zip(ops, operands[1:]):
        if op == "*":
            terms[-1] *= value
        else:
            terms.append(value)
            signs.append(1 if op == "+" else -1)
    return sum(sign * term for sign, term in zip(signs, terms))


def make_problem(
    spec: str | int | ArithmeticSpec,
    *,
    seed: int,
    split: str,
    index: int,
    attempt: int = 0,
    style: Style = "plain",
) -> dict:
    """Problem ``index`` of ``split`` under ``seed``: a pure function of its arguments (no exclusion applied)."""
    spec = get_spec(spec)
    rng = _rng(seed, split, index, attempt)
    operands = [_draw_operand(rng, spec) for _ in range(spec.num_operands)]
    ops = [spec.ops[int(k)] for k in rng.integers(0, len(spec.ops), size=spec.num_operands - 1)]
    problem = _format_problem(spec, operands, ops, style)
    suffix = f"#{attempt}" if attempt else ""
    problem["id"] = f"{spec.name}/{split}/{index}{suffix}"
    return problem


def _format_problem(spec: ArithmeticSpec, operands: Sequence[int], ops: Sequence[str], style: Style) -> dict:
    """The record of one drawn problem (prompt, answer, level, solution; the caller sets its id)."""
    value = _evaluate(operands, ops)
    if style == "plain":
        width = spec.max_digits if spec.pad_operands else 0
        words = [f"{x:0{width}d}" for x in operands]
        expression = words[0] + "".join(op + w for op, w in zip(ops, words[1:]))
        prompt = expression + "="
        answer = f"{value:0{spec.answer_width}d}" if spec.answer_width else str(value)
        solution = answer
    elif style == "natural":
        expression = str(operands[0]) + "".join(f" {op} {x}" for op, x in zip(ops, operands[1:]))
        shown = expression.replace("*", "\\times")
        prompt = f"What is {expression}? {NATURAL_INSTRUCTION}"
        answer = str(value)
        solution = f"${shown} = {value}$. The answer is $\\boxed{{{value}}}$."
    else:
        raise ValueError(f"arithmetic: style must be 'plain' or 'natural', got {style!r}")
    return {"prompt": prompt, "answer": answer, "level": spec.level, "id": "", "solution": solution}


@dataclass(frozen=True)
class ArithmeticTask:
    """A seeded arithmetic task over one spec or a mix of specs (problem i uses ``specs[i % len(specs)]``).

    ``test_set()`` is the fixed held-out set; ``problem(i, "train")`` never repeats a test prompt;
    ``source(split, size)`` is a random-access sequence for ``grain.MapDataset.source``.
    """

    specs: tuple[ArithmeticSpec, ...] = field(default_factory=lambda: (PRESETS["sum3"],))
    seed: int = 0
    test_size: int | None = None  # None: min(200, a quarter of the prompt space)
    style: Style = "plain"
    max_redraws: int = 1000

    @classmethod
    def from_preset(
        cls, preset: str | int | ArithmeticSpec | Sequence[str | int | ArithmeticSpec] = "sum3", **kwargs
    ) -> "ArithmeticTask":
        """``ArithmeticTask.from_preset("sum3")``, ``from_preset([1, 2, 3], seed=1)``, ``from_preset("level4")``."""
        items = preset if isinstance(preset, (list, tuple)) else [preset]
        return cls(specs=tuple(get_spec(item) for item in items), **kwargs)

    def __post_init__(self) -> None:
        specs = self.specs
        if isinstance(specs, (str, int, ArithmeticSpec)):
            specs = (specs,)
        if not specs:
            raise ValueError("ArithmeticTask: specs must not be empty")
        object.__setattr__(self, "specs", tuple(get_spec(s) for s in specs))
        if self.style not in ("plain", "natural"):
            raise ValueError(f"ArithmeticTask: style must be 'plain' or 'natural', got {self.style!r}")
        space = sum(spec.num_distinct_prompts for spec in self.specs)
        if self.test_size is None:
            object.__setattr__(self, "test_size", min(200, space // 4))
        if not 0 <= self.test_size <= space // 2:
            raise ValueError(
                f"ArithmeticTask: test_size={self.test_size} must be between 0 and half the number of distinct "
                f"prompts ({space // 2}) of specs {[s.name for s in self.specs]}, or train could not avoid them"
            )

    @property
    def name(self) -> str:
        """The task's name, its specs' names joined by '+' (the prefix of every problem id)."""
        return "+".join(spec.name for spec in self.specs)

    def _raw(self, split: str, index: int, attempt: int = 0) -> dict:
        spec = self.specs[index % len(self.specs)]
        return make_problem(spec, seed=self.seed, split=split, index=index, attempt=attempt, style=self.style)

    @cached_property
    def _test(self) -> tuple[list[dict], frozenset[str]]:
        problems: list[dict] = []
        seen: set[str] = set()
        index = 0
        while len(problems) < self.test_size:
            problem = self._raw("test", index)
            index += 1
            if problem["prompt"] not in seen:
                seen.add(problem["prompt"])
                problem["id"] = f"{self.name}/test/{len(problems)}"
                problems.append(problem)
        return problems, frozenset(seen)

    def test_set(self) -> list[dict]:
        """The held-out problems: the first ``test_size`` distinct prompts of the test stream (fresh copies)."""
        return [dict(p) for p in self._test[0]]

    def test_prompts(self) -> frozenset[str]:
        """The held-out prompts, so that train problems can be redrawn until they are none of them."""
        return self._test[1]

    def problem(self, index: int, split: str = "train") -> dict:
        """Problem ``index`` of ``split`` ("train": redrawn until its prompt is not a test prompt; "test")."""
        if split == "test":
            if not 0 <= index < self.test_size:
                raise IndexError(f"ArithmeticTask: test index {index} out of range [0, {self.test_size})")
            return dict(self._test[0][index])
        excluded = self._test[1]
        for attempt in range(self.max_redraws):
            problem = self._raw(split, index, attempt)
            if problem["prompt"] not in excluded:
                return problem
        raise RuntimeError(
            f"ArithmeticTask: {split} problem {index} hit the test set {self.max_redraws} times; use a smaller test_size"
        )

    def batch(self, index: int, size: int, split: str = "train", stream: int = 0) -> list[dict]:
        """Batch ``index`` of ``size`` fresh ``split`` problems, drawn vectorised (for training loops).

        ``problem(i)`` seeds one Generator per problem (exactly addressable, ~0.1 ms each); a training loop that
        needs 256 problems a step for thousands of steps wants them faster. Here one Generator seeded from
        ``(seed, split, "batch", index)`` draws the whole batch with the same operand and operator distribution,
        so batch ``index`` is still a pure function of its arguments (a resumed run redraws the same batch).
        Train batches never show a test prompt (those rows are redrawn). Problem ``j`` uses
        ``specs[j % len(specs)]``; "plain" and "natural" styles as in `make_problem`. ``stream`` picks one of many
        independent train streams (a training seed's own problem order); stream 0 is the historical one.
        """
        if index < 0 or size < 1:
            raise ValueError(f"ArithmeticTask.batch: need index >= 0 and size >= 1, got index={index}, size={size}")
        if stream < 0:
            raise ValueError(f"ArithmeticTask.batch: stream must be >= 0, got {stream}")
        key = [self.seed, _split_code(split), _split_code("batch"), index] + ([stream] if stream else [])
        rng = np.random.default_rng(key)
        excluded = self._test[1] if split != "test" else frozenset()
        out: list[dict | None] = [None] * size
        for attempt in range(self.max_redraws):
            todo = [j for j in range(size) if out[j] is None]
            if not todo:
                return out  # type: ignore[return-value]
            for s, spec in enumerate(self.specs):
                rows = [j for j in todo if j % len(self.specs) == s]
                if not rows:
                    continue
                n, k = len(rows), spec.num_operands
                digits = rng.integers(spec.min_digits, spec.max_digits + 1, size=(n, k))
                low = np.where(digits == 1, 0, 10 ** (digits - 1))
                values = rng.integers(low, 10**digits)  # uniform among numbers with that many digits
                op_index = rng.integers(0, len(spec.ops), size=(n, k - 1))
                for r, j in enumerate(rows):
                    problem = _format_problem(spec, [int(v) for v in values[r]],
                                              [spec.ops[int(o)] for o in op_index[r]], self.style)
                    if problem["prompt"] in excluded:
                        continue
                    problem["id"] = f"{spec.name}/{split}/batch{index}/{j}" + (f"#{attempt}" if attempt else "")
                    out[j] = problem
        raise RuntimeError(
            f"ArithmeticTask.batch: kept hitting the test set after {self.max_redraws} redraws; use a smaller test_size"
        )

    def source(self, split: str = "train", size: int | None = None) -> "ArithmeticSource":
        """A random-access view of ``size`` problems of ``split`` (default: the test set / 1,000,000 train)."""
        if size is None:
            size = self.test_size if split == "test" else 1_000_000
        if split == "test" and size > self.test_size:
            raise ValueError(f"ArithmeticTask: the test split has {self.test_size} problems, asked for {size}")
        return ArithmeticSource(self, split, int(size))


class ArithmeticSource(Sequence):
    """``len``/``[i]`` over one split of an ``ArithmeticTask`` (what ``grain.MapDataset.source`` needs)."""

    def __init__(self, task: ArithmeticTask, split: str, size: int) -> None:
        if size < 0:
            raise ValueError(f"ArithmeticSource: size must be >= 0, got {size}")
        self.task, self.split, self.size = task, split, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.size))]
        index = int(index)
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"ArithmeticSource: index {index} out of range [0, {self.size})")
        return self.task.problem(index, self.split)

    def __repr__(self) -> str:
        return f"ArithmeticSource({self.task.name}, split={self.split!r}, size={self.size})"


def prompt_length(spec: str | int | ArithmeticSpec) -> int:
    """Characters in a "plain" prompt when operands are padded (the fixed sequence shape of the char model)."""
    spec = get_spec(spec)
    if not spec.pad_operands:
        raise ValueError(f"prompt_length: spec {spec.name} has variable-length prompts (pad_operands=False)")
    return spec.num_operands * spec.max_digits + (spec.num_operands - 1) + 1

