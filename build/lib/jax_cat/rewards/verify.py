"""0/1 correctness rewards: a fast exact check in-process, HF math-verify in a bounded process pool for the rest.

Why a pool: symbolic checks (sympy) can hang or explode in memory on adversarial completions, and
math-verify's own SIGALRM timeout only works in a main thread and cannot interrupt long C calls. So the
symbolic check runs in at most ``max_workers`` worker processes started with "forkserver" (or "spawn"),
never "fork" (the parent may hold JAX's threads). At most ``max_workers`` answers are in flight, each with
its own deadline; a worker that misses it or dies is killed, its answer scores 0, and the pool is rebuilt
(the other in-flight answers are retried; an answer that takes the pool down twice, alone, scores 0).

Decision order for one (prediction, gold) pair of extracted answers:

1. no prediction / empty / longer than ``max_answer_chars`` -> 0;
2. normalised strings equal (``normalize_answer``) -> 1;
3. both plain numbers (int, decimal, a/b, \\frac{a}{b}) with equal exact value -> 1; both integers -> 0;
   an integer gold and a prediction without a single digit -> 0  (the arithmetic task never needs the pool);
4. otherwise math-verify in the pool (``use_math_verify=False``: 0).

Workers import ``__main__`` like any multiprocessing child: scripts that call this at top level need the
usual ``if __name__ == "__main__":`` guard. Using "forkserver" sets the process-wide forkserver preload
to this package's worker module (sympy/math-verify warm before each fork).
"""
from __future__ import annotations

import atexit
import collections
import concurrent.futures as cf
import multiprocessing
import re
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from jax_cat.rewards.extract import (
    ExtractStyle,
    clean_answer,
    extract_answer,
    normalize_answer,
    parse_number,
)

_INT_RE = re.compile(r"-?\d+")
_WORKER_MODULE = "jax_cat.rewards._worker"


def fast_verdict(pred: str | None, gold: str | None, *, max_answer_chars: int = 1000) -> bool | None:
    """The verdict when it needs no symbolic algebra (steps 1-3 of the module doc), else None."""
    if not isinstance(pred, str) or not isinstance(gold, str):
        return False
    if len(pred) > max_answer_chars:
        return False
    if _INT_RE.fullmatch(pred) and _INT_RE.fullmatch(gold):  # the arithmetic task's only case
        return int(pred) == int(gold)
    norm_pred, norm_gold = normalize_answer(pred), normalize_answer(gold)
    if not norm_pred or not norm_gold:
        return False
    if norm_pred == norm_gold:
        return True
    value_pred, value_gold = parse_number(pred), parse_number(gold)
    if value_pred is not None and value_gold is not None:
        if value_pred == value_gold:
            return True
        if _INT_RE.fullmatch(norm_pred) and _INT_RE.fullmatch(norm_gold):
            return False
    if _INT_RE.fullmatch(norm_gold) and not any(ch.isdigit() for ch in norm_pred):
        return False
    return None


def gold_answer(gold: Any) -> str | None:
    """A dataset's gold field as an answer string: extracted when it holds \\boxed{} or '#### x', else cleaned."""
    if gold is None:
        return None
    text = str(gold)
    if "\\boxed" in text or "\\fbox" in text or "####" in text:
        return extract_answer(text)
    return clean_answer(text) or None


def _completion_text(completion: Any) -> str | None:
    text = getattr(completion, "text", completion)
    return str(text) if isinstance(text, (str, np.str_)) else None


class MathVerifier:
    """Checks extracted answers against golds; owns a lazily started, reusable, bounded worker pool.

    Use as a context manager or call ``close()``; pools still open at interpreter exit are closed then.
    """

    def __init__(
        self,
        *,
        max_workers: int = 2,
        timeout_s: float = 10.0,
        use_math_verify: bool = True,
        max_answer_chars: int = 1000,
        mp_context: str | None = None,
        memory_limit_mb: int | None = 2048,
        startup_timeout_s: float = 120.0,
        cache_size: int = 65536,
        pair_fn: Callable[[str, str, int], bool] | None = None,
    ) -> None:
        if max_workers < 1:
            raise ValueError(f"MathVerifier: max_workers must be >= 1, got {max_workers}")
        if timeout_s <= 0:
            raise ValueError(f"MathVerifier: timeout_s must be > 0, got {timeout_s}")
        if mp_context not in (None, "spawn", "forkserver"):
            raise ValueError(f"MathVerifier: mp_context must be 'spawn' or 'forkserver' (never 'fork'), got {mp_context!r}")
        self.max_workers = max_workers
        self.timeout_s = float(timeout_s)
        self.use_math_verify = use_math_verify
        self.max_answer_chars = max_answer_chars
        self.memory_limit_mb = memory_limit_mb
        self.startup_timeout_s = startup_timeout_s
        self._mp_context_name = mp_context or (
            "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        )
        self._pair_fn = pair_fn
        self._pool: cf.ProcessPoolExecutor | None = None
        self._lock = threading.RLock()
        self._cache: collections.OrderedDict[tuple[str, str], bool] = collections.OrderedDict()
        self._cache_size = cache_size
        self.stats = collections.Counter()
        _LIVE_VERIFIERS.add(self)

    # -- public API -------------------------------------------------------------------------------------

    def check(self, pred: str | None, gold: str | None) -> bool:
        """Whether one extracted prediction is equivalent to one gold answer."""
        return self.check_many([(pred, gold)])[0]

    def check_many(self, pairs: Sequence[tuple[str | None, str | None]]) -> list[bool]:
        """Verdicts for many (prediction, gold) pairs: fast path in-process, the rest in the pool."""
        with self._lock:
            verdicts: list[bool | None] = []
            undecided: dict[tuple[str, str], list[int]] = {}
            for i, (pred, gold) in enumerate(pairs):
                verdict = fast_verdict(pred, gold, max_answer_chars=self.max_answer_chars)
                if verdict is None:
                    key = (pred, gold)
                    if not self.use_math_verify:
                        verdict = False
                    elif key in self._cache:
                        self._cache.move_to_end(key)
                        verdict = self._cache[key]
                        self.stats["cache_hits"] += 1
                    else:
                        undecided.setdefault(key, []).append(i)
                else:
                    self.stats["fast"] += 1
                verdicts.append(verdict)
            if undecided:
                for key, value in self._run_in_pool(list(undecided)).items():
                    self._remember(key, value)
                    for i in undecided[key]:
                        verdicts[i] = value
            return [bool(v) for v in verdicts]

    def rewards(self, completions: Sequence[Any], golds: Sequence[Any], *, style: ExtractStyle = "auto") -> np.ndarray:
        """float32 0/1 reward per completion: its extracted answer checked against the gold at the same index."""
        if len(completions) != len(golds):
            raise ValueError(
                f"compute_rewards: completions ({len(completions)}) and golds ({len(golds)}) must have equal "
                "length; repeat each gold once per sample (e.g. [g for g in golds for _ in range(n)])"
            )
        pairs = []
        for completion, gold in zip(completions, golds):
            text = _completion_text(completion)
            pred = extract_answer(text, style=style) if text is not None else None
            pairs.append((pred, gold_answer(gold)))
        return np.asarray(self.check_many(pairs), dtype=np.float32)

    def close(self) -> None:
        """Stop the worker processes (a later call starts a fresh pool)."""
        with self._lock:
            self._kill_pool()

    def __enter__(self) -> "MathVerifier":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- pool -------------------------------------------------------------------------------------------

    def _remember(self, key: tuple[str, str], value: bool) -> None:
        self._cache[key] = value
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _context(self) -> multiprocessing.context.BaseContext:
        ctx = multiprocessing.get_context(self._mp_context_name)
        if self._mp_context_name == "forkserver" and self._pair_fn is None:
            ctx.set_forkserver_preload([_WORKER_MODULE])
        return ctx

    def _start_pool(self) -> cf.ProcessPoolExecutor:
        from jax_cat.rewards import _worker

        ctx = self._context()
        pool = cf.ProcessPoolExecutor(
            max_workers=self.max_workers,
            mp_context=ctx,
            initializer=_worker.init_worker,
            initargs=(self.memory_limit_mb,),
        )
        # Start every worker now (one submit per missing worker spawns one process), so that interpreter
        # start-up and imports never count against an answer's deadline.
        pings = [pool.submit(_worker.ping) for _ in range(self.max_workers)]
        done, not_done = cf.wait(pings, timeout=self.startup_timeout_s)
        if not_done or any(f.exception() is not None for f in done):
            self._pool = pool
            self._kill_pool()
            raise RuntimeError(
                f"MathVerifier: could not start {self.max_workers} '{self._mp_context_name}' workers "
                f"within {self.startup_timeout_s:.0f}s"
            )
        self.stats["pool_starts"] += 1
        return pool

    def _kill_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        processes = list((getattr(pool, "_processes", None) or {}).values())
        for process in processes:
            if process.is_alive():
                process.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.join(timeout=5)

    def _run_in_pool(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], bool]:
        """Verdicts for keys, at most max_workers in flight, each with its own deadline (see module doc)."""
        from jax_cat.rewards import _worker

        fn = self._pair_fn or _worker.math_verify_pair
        inner_timeout = max(1, int(self.timeout_s // 4))
        results: dict[tuple[str, str], bool] = {}
        pending = collections.deque(keys)
        suspects: collections.deque[tuple[str, str]] = collections.deque()  # in flight when a worker died
        crashed_once: set[tuple[str, str]] = set()
        inflight: dict[cf.Future, tuple[tuple[str, str], float]] = {}

        def submit(key: tuple[str, str]) -> None:
            assert self._pool is not None
            inflight[self._pool.submit(fn, key[0], key[1], inner_timeout)] = (key, time.monotonic() + self.timeout_s)

        while pending or suspects or inflight:
            if self._pool is None:
                self._pool = self._start_pool()
            if suspects:  # one suspect alone, so a crash is pinned on the answer that caused it
                if not inflight:
                    submit(suspects.popleft())
            else:
                while pending and len(inflight) < self.max_workers:
                    submit(pending.popleft())
            next_deadline = min(deadline for _, deadline in inflight.values())
            cf.wait(list(inflight), timeout=max(0.0, next_deadline - time.monotonic()), return_when=cf.FIRST_COMPLETED)
            now = time.monotonic()
            broken = expired = False
            for future, (key, deadline) in list(inflight.items()):
                if future.done():
                    del inflight[future]
                    error = future.exception()
                    if error is None:
                        results[key] = bool(future.result())
                        self.stats["pool"] += 1
                    elif isinstance(error, BrokenProcessPool):
                        broken = True
                        if key in crashed_once:
                            results[key] = False
                            self.stats["crashes"] += 1
                        else:
                            crashed_once.add(key)
                            suspects.append(key)
                    else:  # a failing check is a wrong answer, not the caller's crash
                        results[key] = False
                        self.stats["errors"] += 1
                elif deadline <= now:
                    del inflight[future]
                    results[key] = False
                    self.stats["timeouts"] += 1
                    expired = True
            if broken or expired:
                # Answers still running in the doomed pool: retried after the rebuild (as suspects if it broke).
                for key, _ in inflight.values():
                    if broken:
                        crashed_once.add(key)
                        suspects.append(key)
                    else:
                        pending.appendleft(key)
                inflight.clear()
                self._kill_pool()
                self.stats["recycles"] += 1
        return results


_LIVE_VERIFIERS: "weakref.WeakSet[MathVerifier]" = weakref.WeakSet()
_DEFAULT: MathVerifier | None = None
_DEFAULT_LOCK = threading.Lock()


@atexit.register
def _close_all() -> None:
    for verifier in list(_LIVE_VERIFIERS):
        try:
            verifier.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def default_verifier() -> MathVerifier:
    """The process-wide verifier used when none is passed (created on first use, closed by ``close()``)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = MathVerifier()
        return _DEFAULT


def close() -> None:
    """Stop the default verifier's worker pool (it restarts lazily on the next symbolic check)."""
    with _DEFAULT_LOCK:
        if _DEFAULT is not None:
            _DEFAULT.close()


def is_equivalent(
    pred: str | None, gold: str | None, *, verifier: MathVerifier | None = None, use_math_verify: bool = True
) -> bool:
    """Whether an extracted answer equals a gold answer (exact/normalised/numeric first, then math-verify)."""
    if not use_math_verify:
        return bool(fast_verdict(pred, gold))
    return (verifier or default_verifier()).check(pred, gold)


def compute_rewards(
    completions: Sequence[Any],
    golds: Sequence[Any],
    *,
    style: ExtractStyle = "auto",
    verifier: MathVerifier | None = None,
    use_math_verify: bool = True,
) -> np.ndarray:
    """float32 0/1 rewards: extract each completion's final answer and check it against its gold.

    ``completions`` are strings (or objects with a ``.text``); ``golds`` are answers ("18", "\\frac{1}{2}")
    or gold solutions holding ``\\boxed{}`` / ``#### x``. Bad, empty or pathological completions give 0.
    """
    if not use_math_verify:
        verifier = MathVerifier(use_math_verify=False)  # never starts a pool
    return (verifier or default_verifier()).rewards(completions, golds, style=style)
