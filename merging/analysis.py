"""The DoTS task-vector properties between two task vectors (e.g. tau_sft and tau_rl).

1. magnitude: ratio of norms, globally and per module (L2 and mean |x|);
2. sign interference: fraction of entries where both vectors moved the weight and in opposite directions, overall and
   among entries that are significant in both (each in its tensor's top `top_fraction` by |x|);
3. where the update mass lives: the share of each vector's squared L2 norm per module (attention q/k/v/o, MLP
   gate/up/down, embeddings, lm_head, norms) and per layer; plus cosine similarity.

Statistics are additive per tensor (`PairStats`, float64 host sums), so the same code serves pytrees in memory
(`compare`) and checkpoints streamed tensor by tensor (`merging.stream.analyze_checkpoints`).

Imports nothing from jax_cat.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from merging._checks import check_finite
from merging._paths import ATTENTION, MLP, MODULES, PathSelector, classify_param, is_vector_leaf, make_selector
from merging.sparsify import kth_largest_abs, num_kept
from merging.task_vectors import check_compatible

__all__ = [
    "PairStats", "Comparison", "tensor_pair_stats", "compare",
    "magnitude_ratio", "sign_conflict", "cosine_similarity", "module_mass",
]

_CHUNK = 1 << 22


@dataclass(frozen=True)
class PairStats:
    """Additive statistics of two task vectors over a set of entries (a = first vector, b = second)."""

    n: int = 0
    a2: float = 0.0  # sum a^2
    b2: float = 0.0
    ab: float = 0.0  # sum a*b
    a1: float = 0.0  # sum |a|
    b1: float = 0.0
    a_nonzero: int = 0
    b_nonzero: int = 0
    both_nonzero: int = 0
    conflict: int = 0  # both non-zero, opposite signs
    both_significant: int = 0  # |a| and |b| each in their tensor's top fraction (and non-zero)
    conflict_significant: int = 0

    def __add__(self, other: "PairStats") -> "PairStats":
        return PairStats(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @staticmethod
    def sum(items: Iterable["PairStats"]) -> "PairStats":
        """The statistics of the union of disjoint entry sets (all fields are additive), for totals and groups."""
        items = list(items)
        out = {}
        for f in fields(PairStats):
            vals = [getattr(s, f.name) for s in items]
            out[f.name] = math.fsum(vals) if f.type in ("float", float) else sum(vals)
        return PairStats(**out)

    # --- derived metrics (NaN where undefined) ---
    @property
    def l2_a(self) -> float:
        """||a||_2 over these entries."""
        return math.sqrt(self.a2)

    @property
    def l2_b(self) -> float:
        """||b||_2 over these entries."""
        return math.sqrt(self.b2)

    @property
    def ratio_l2(self) -> float:
        """||a|| / ||b||: how much larger the first update is (NaN when b is zero)."""
        return self.l2_a / self.l2_b if self.b2 > 0 else math.nan

    @property
    def mean_abs_a(self) -> float:
        """mean |a| per entry (NaN over no entries)."""
        return self.a1 / self.n if self.n else math.nan

    @property
    def mean_abs_b(self) -> float:
        """mean |b| per entry (NaN over no entries)."""
        return self.b1 / self.n if self.n else math.nan

    @property
    def ratio_mean_abs(self) -> float:
        """sum |a| / sum |b| (NaN when b is zero)."""
        return self.a1 / self.b1 if self.b1 > 0 else math.nan

    @property
    def cosine(self) -> float:
        """cos(a, b): whether the two updates point the same way (NaN when either is zero)."""
        return self.ab / math.sqrt(self.a2 * self.b2) if self.a2 > 0 and self.b2 > 0 else math.nan

    @property
    def conflict_rate(self) -> float:
        """Share of the entries both change where their signs differ: the interference a plain sum suffers."""
        return self.conflict / self.both_nonzero if self.both_nonzero else math.nan

    @property
    def conflict_rate_significant(self) -> float:
        """The sign-conflict share among entries in both vectors' top fraction, where interference matters most."""
        return self.conflict_significant / self.both_significant if self.both_significant else math.nan

    def metrics(self) -> dict[str, float]:
        """The derived metrics (and densities) as one flat dict, for the table and the JSON report."""
        return {
            "n": self.n, "l2_a": self.l2_a, "l2_b": self.l2_b, "ratio_l2": self.ratio_l2,
            "mean_abs_a": self.mean_abs_a, "mean_abs_b": self.mean_abs_b, "ratio_mean_abs": self.ratio_mean_abs,
            "cosine": self.cosine, "conflict_rate": self.conflict_rate,
            "conflict_rate_significant": self.conflict_rate_significant,
            "density_a": self.a_nonzero / self.n if self.n else math.nan,
            "density_b": self.b_nonzero / self.n if self.n else math.nan,
        }


def tensor_pair_stats(a: Any, b: Any, *, top_fraction: float = 0.3) -> PairStats:
    """`PairStats` of one tensor of each vector (concrete arrays, same shape); float64 sums over 4M-entry chunks."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    ha = np.asarray(a).reshape(-1)
    hb = np.asarray(b).reshape(-1)
    n = ha.size
    k = num_kept(top_fraction, n)
    ta = float(kth_largest_abs(ha.astype(np.float32) if ha.dtype.itemsize < 4 else ha, k)) if k else math.inf
    tb = float(kth_largest_abs(hb.astype(np.float32) if hb.dtype.itemsize < 4 else hb, k)) if k else math.inf
    acc = dict.fromkeys((f.name for f in fields(PairStats)), 0)
    floats: dict[str, list[float]] = {"a2": [], "b2": [], "ab": [], "a1": [], "b1": []}
    for start in range(0, n, _CHUNK):
        ca = ha[start : start + _CHUNK].astype(np.float64)
        cb = hb[start : start + _CHUNK].astype(np.float64)
        floats["a2"].append(float(np.dot(ca, ca)))
        floats["b2"].append(float(np.dot(cb, cb)))
        floats["ab"].append(float(np.dot(ca, cb)))
        floats["a1"].append(float(np.abs(ca).sum()))
        floats["b1"].append(float(np.abs(cb).sum()))
        sa, sb = np.sign(ca), np.sign(cb)
        both = (sa != 0) & (sb != 0)
        opposite = (sa * sb) < 0
        significant = both & (np.abs(ca) >= ta) & (np.abs(cb) >= tb)
        acc["a_nonzero"] += int(np.count_nonzero(sa))
        acc["b_nonzero"] += int(np.count_nonzero(sb))
        acc["both_nonzero"] += int(np.count_nonzero(both))
        acc["conflict"] += int(np.count_nonzero(opposite))
        acc["both_significant"] += int(np.count_nonzero(significant))
        acc["conflict_significant"] += int(np.count_nonzero(significant & opposite))
    acc["n"] = n
    acc.update({key: math.fsum(vals) for key, vals in floats.items()})
    return PairStats(**acc)


@dataclass(frozen=True)
class Comparison:
    """Per-tensor `PairStats` of two task vectors with aggregations by module, layer and both."""

    per_tensor: dict[str, PairStats]
    labels: tuple[str, str] = ("a", "b")
    top_fraction: float = 0.3
    classify: Callable[[str], tuple[str, int | None]] = classify_param

    @classmethod
    def from_pairs(
        cls, pairs: Iterable[tuple[str, Any, Any]], *, labels: tuple[str, str] = ("a", "b"),
        top_fraction: float = 0.3, classify: Callable[[str], tuple[str, int | None]] = classify_param,
    ) -> "Comparison":
        """Build from (name, tensor of a, tensor of b) triples, one tensor at a time (streamable)."""
        stats = {name: tensor_pair_stats(a, b, top_fraction=top_fraction) for name, a, b in pairs}
        return cls(stats, labels, top_fraction, classify)

    def total(self) -> PairStats:
        """The statistics over every tensor: the whole-model row of the report."""
        return PairStats.sum(self.per_tensor.values())

    def _group(self, key: Callable[[str], Any]) -> dict[Any, PairStats]:
        groups: dict[Any, list[PairStats]] = {}
        for name, s in self.per_tensor.items():
            groups.setdefault(key(name), []).append(s)
        return {k: PairStats.sum(v) for k, v in groups.items()}

    def by_module(self) -> dict[str, PairStats]:
        """Statistics per module kind (q_proj, ..., down_proj, embed, ...), in the report's order."""
        g = self._group(lambda n: self.classify(n)[0])
        return {m: g[m] for m in MODULES if m in g}

    def by_family(self) -> dict[str, PairStats]:
        """attention (q/k/v/o), mlp (gate/up/down), embed, lm_head, norm, other."""
        def family(name: str) -> str:
            m = self.classify(name)[0]
            return "attention" if m in ATTENTION else "mlp" if m in MLP else m
        return self._group(family)

    def by_layer(self) -> dict[int, PairStats]:
        """Statistics per decoder layer, in layer order (tensors outside the layers left out)."""
        g = self._group(lambda n: self.classify(n)[1])
        return {k: g[k] for k in sorted(k for k in g if k is not None)}

    def by_module_layer(self) -> dict[tuple[str, int], PairStats]:
        """Statistics per (module kind, layer): the cells of the sign-conflict heat map."""
        g = self._group(self.classify)
        return {k: g[k] for k in sorted((k for k in g if k[1] is not None), key=lambda k: (MODULES.index(k[0]), k[1]))}

    def mass(self) -> dict[str, dict[str, float]]:
        """Share of each vector's squared L2 norm (and of the parameters) held by each module."""
        total = self.total()
        return {
            m: {
                "params": s.n / total.n if total.n else math.nan,
                self.labels[0]: s.a2 / total.a2 if total.a2 > 0 else math.nan,
                self.labels[1]: s.b2 / total.b2 if total.b2 > 0 else math.nan,
            }
            for m, s in self.by_module().items()
        }

    def summary(self) -> dict[str, Any]:
        """JSON-able report: global, per module, per layer and per (module, layer) metrics, module mass."""
        return {
            "labels": list(self.labels),
            "top_fraction": self.top_fraction,
            "global": self.total().metrics(),
            "per_family": {k: v.metrics() for k, v in self.by_family().items()},
            "per_module": {k: v.metrics() for k, v in self.by_module().items()},
            "per_layer": {str(k): v.metrics() for k, v in self.by_layer().items()},
            "per_module_layer": {f"{m}.{l}": v.metrics() for (m, l), v in self.by_module_layer().items()},
            "mass": self.mass(),
            "per_tensor": {k: asdict(v) for k, v in self.per_tensor.items()},
        }

    def table(self) -> str:
        """Human-readable report (global line, per-module table, per-layer table)."""
        a, b = self.labels
        t = self.total()
        pct = lambda x: "   n/a" if math.isnan(x) else f"{100 * x:6.2f}"
        num = lambda x: "     n/a" if math.isnan(x) else f"{x:8.3g}"
        top = f"top {100 * self.top_fraction:g}%"
        lines = [
            f"Task vectors {a} vs {b}: {t.n:,} parameters in {len(self.per_tensor)} tensors",
            f"  ||{a}||_2 = {t.l2_a:.4g}   ||{b}||_2 = {t.l2_b:.4g}   ratio L2 {a}/{b} = {t.ratio_l2:.4g}   "
            f"ratio mean|x| = {t.ratio_mean_abs:.4g}   cosine = {t.cosine:.4f}",
            f"  sign conflict: {pct(t.conflict_rate).strip()}% of entries both changed; "
            f"{pct(t.conflict_rate_significant).strip()}% where both are in their tensor's {top}",
            f"  non-zero entries: {a} {pct(t.a_nonzero / t.n if t.n else math.nan).strip()}%, "
            f"{b} {pct(t.b_nonzero / t.n if t.n else math.nan).strip()}%",
            "",
            f"{'module':<10}{'params%':>8}{a + ' mass%':>12}{b + ' mass%':>12}{'ratio L2':>10}{'ratio |x|':>10}"
            f"{'cosine':>9}{'conflict%':>10}{'conf.' + top.split()[1]:>10}",
        ]
        mass = self.mass()
        for m, s in self.by_module().items():
            lines.append(
                f"{m:<10}{pct(mass[m]['params'])[:8]:>8}{pct(mass[m][a]):>12}{pct(mass[m][b]):>12}"
                f"{num(s.ratio_l2):>10}{num(s.ratio_mean_abs):>10}{num(s.cosine):>9}{pct(s.conflict_rate):>10}"
                f"{pct(s.conflict_rate_significant):>10}"
            )
        layers = self.by_layer()
        if layers:
            lines += ["", f"{'layer':<10}{'||' + a + '||':>12}{'||' + b + '||':>12}{'ratio L2':>10}{'ratio |x|':>10}"
                          f"{'cosine':>9}{'conflict%':>10}{'conf.' + top.split()[1]:>10}"]
            for layer, s in layers.items():
                lines.append(
                    f"{layer:<10}{s.l2_a:>12.4g}{s.l2_b:>12.4g}{num(s.ratio_l2):>10}{num(s.ratio_mean_abs):>10}"
                    f"{num(s.cosine):>9}{pct(s.conflict_rate):>10}{pct(s.conflict_rate_significant):>10}"
                )
        return "\n".join(lines)


def compare(
    a: Any,
    b: Any,
    *,
    top_fraction: float = 0.3,
    labels: tuple[str, str] = ("a", "b"),
    classify: Callable[[str], tuple[str, int | None]] = classify_param,
    filter: PathSelector = None,
    exclude: PathSelector = None,
    allow_nonfinite: bool = False,
) -> Comparison:
    """Compare two task-vector pytrees of the same structure (see the module docstring for what is measured).

    NaN/Inf entries are refused (`NonFiniteError` naming the tensor) unless `allow_nonfinite`."""
    selected = make_selector(filter, exclude)
    rows = check_compatible([a, b], list(labels), check_dtype=False)

    def pairs():
        for p, (x, y) in rows:
            if is_vector_leaf(x) and selected(p):
                if not allow_nonfinite:
                    check_finite(p, [x, y], list(labels))
                yield p, x, y

    return Comparison.from_pairs(pairs(), labels=labels, top_fraction=top_fraction, classify=classify)


def magnitude_ratio(a: Any, b: Any, *, kind: str = "l2") -> float:
    """||a|| / ||b|| over the whole vectors: kind "l2" or "mean_abs" (mean |x|)."""
    t = compare(a, b).total()
    if kind == "l2":
        return t.ratio_l2
    if kind == "mean_abs":
        return t.ratio_mean_abs
    raise ValueError(f"kind must be 'l2' or 'mean_abs', got {kind!r}")


def sign_conflict(a: Any, b: Any, *, top_fraction: float | None = None) -> float:
    """Fraction of entries changed by both vectors whose signs differ; with `top_fraction`, only among entries in
    the top fraction of |x| of their tensor in both vectors."""
    t = compare(a, b, top_fraction=top_fraction if top_fraction is not None else 1.0).total()
    return t.conflict_rate if top_fraction is None else t.conflict_rate_significant


def cosine_similarity(a: Any, b: Any) -> float:
    """<a, b> / (||a|| ||b||) of the flattened vectors."""
    return compare(a, b).total().cosine


def module_mass(tau: Any, classify: Callable[[str], tuple[str, int | None]] = classify_param) -> dict[str, float]:
    """Share of ||tau||_2^2 held by each module kind."""
    return {m: v["a"] for m, v in compare(tau, tau, classify=classify).mass().items()}
