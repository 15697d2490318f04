"""The Strategy interface every aggregation rule implements (docs/ARCHITECTURE.md, Contracts)."""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from fedgrid.apps.codec import is_float
from fedgrid.apps.kinds import COUNT, WEIGHT, buffers, infer_kinds
from fedgrid.apps.records import Instructions
from fedgrid.apps.update import ClientUpdate, Failure

Params = dict[str, np.ndarray]


class StrategyOptions(BaseModel):
    """A strategy's block of the job file; each strategy subclasses it with its own keys and a
    ``name: Literal[...]``, so the job schema is a union discriminated by name and a misspelled
    option is rejected with that strategy's valid keys."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Strategy:
    """configure -> per-client instructions; aggregate -> next global params; state for checkpoints.

    Strategies do numpy math on the driver only. Their state is a dict of arrays so it checkpoints
    to Arrow with the model and survives a resume exactly. `asynchronous` strategies are driven by
    the buffered asynchronous loop (flow/rounds/asynchronous.py) instead of synchronous rounds.

    Kinds (apps/kinds.py). ``kinds`` says which tensors are trained weights and which are
    statistics buffers or counters; the round loop sets it before round 1, and unset it is
    inferred from the params. Every subclass's ``aggregate`` is wrapped (`__init_subclass__`) so
    that its result passes through `settle`: the statistics and counters become the clients'
    example-weighted mean (`statistics`) whatever the rule did with them. That one place keeps
    every rule, a user's own included, from moving BatchNorm statistics by a server step; the
    rules that step (`step_toward`) also leave them alone and keep no moments or velocity for them.
    """

    name = "base"
    Options: ClassVar[type[StrategyOptions]]
    asynchronous: ClassVar[bool] = False
    needs_store: ClassVar[bool] = False  # keeps per-client state at the sites (SCAFFOLD's variates: apps/sitestate.py)
    # the next model depends on the updates only through their example-weighted mean, so central DP
    # can noise that mean and secure aggregation can hand over only the sum
    mean_based: ClassVar[bool] = False
    # hooks into the clients' local training (fedgrid.client HOOKS) a client must honour
    needs: ClassVar[frozenset[str]] = frozenset()
    # each tensor's kind (apps/kinds.py), set by the round loop before round 1; None: inferred
    kinds: dict[str, str] | None = None
    _inferred: tuple[tuple[str, ...], dict[str, str]] | None = None

    @classmethod
    def site_weights(cls) -> str | None:
        """How a site's aggregator weighs its clients under ``round.aggregate: site`` (apps/siteagg.py):
        "examples" (the mean-based rules take the example-weighted mean of site means), "steps"
        (FedNova's n_i / tau_i), or None: the rule needs every update and is refused."""
        return "examples" if cls.mean_based and not cls.asynchronous else None

    @classmethod
    def check_job(cls, job: Any) -> tuple[str, str] | None:
        """What this strategy requires of the rest of the job: None, or (the job-file key that is
        wrong, what was expected), which `fedgrid check` and `fedgrid run` print as one line."""
        if cls.asynchronous and job.round.pace == "deadline":
            return "round.pace", (f"pacing sizes the clients of a synchronous round; strategy {cls.name} has no "
                                  "rounds to pace (use round.pace: epochs)")
        return None

    @classmethod
    def derive(cls, opts: Any, job: Any) -> None:
        """Fill in the options the job file left unset (None) whose right value depends on the rest
        of the job, such as the clients' optimiser; called once the job is parsed, so the run, its
        checkpoint and `fedgrid check` all see the values used."""

    @classmethod
    def advice(cls, job: Any) -> list[tuple[str, str]]:
        """Warnings about this job: (the job-file key, what will happen and what to set instead),
        for settings that run but are known to learn much less than FedAvg would."""
        return []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        rule = cls.__dict__.get("aggregate")
        if rule is None or getattr(rule, "settles", False):
            return

        @functools.wraps(rule)
        def aggregate(self: Strategy, rnd: int, global_params: Params, updates: list[ClientUpdate],
                      failures: list[Failure]) -> Params:
            return self.settle(global_params, updates, rule(self, rnd, global_params, updates, failures))

        aggregate.settles = True  # type: ignore[attr-defined]
        cls.aggregate = aggregate  # type: ignore[method-assign]

    def __init__(self, opts: StrategyOptions | None = None):
        self.opts = opts if opts is not None else self.Options()

    def kinds_of(self, params: Params) -> dict[str, str]:
        """Each tensor's kind: the ones the driver set, else inferred from the params (once per set
        of names: a strategy used without the round loop, a unit test)."""
        names = tuple(params)
        if self.kinds is not None and all(n in self.kinds for n in names):
            return self.kinds
        if self._inferred is None or self._inferred[0] != names:
            known = {n: k for n, k in (self.kinds or {}).items() if n in params}
            self._inferred = names, infer_kinds(params, known)
        return self._inferred[1]

    def settle(self, global_params: Params, updates: list[ClientUpdate], out: Params) -> Params:
        """The rule's result with its statistics buffers and counters replaced by `statistics`
        (the round's plain mean of them): what every ``aggregate`` returns."""
        names = buffers(self.kinds_of(global_params))
        if not names or not updates:
            return out
        values = self.statistics(global_params, updates, out, names)
        return OrderedDict((n, values.get(n, a)) for n, a in out.items())

    def statistics(self, global_params: Params, updates: list[ClientUpdate], out: Params,
                   names: list[str]) -> Params:
        """The next values of the statistics and counters `names`: the clients' example-weighted
        mean (each update's ``num_examples * scale``), counters rounded to whole numbers.

        The mean, not the rule's output: a statistic describes the clients' data, and the mean of
        their running statistics is the pooled statistic FedAvg would keep. It is right in every
        way a round reaches the strategy: one folded contribution (flow/rounds/fold.py) or secure
        aggregation's unmasked sum is already that mean, and `weighted_mean` returns it as is;
        central DP's equal weights and noise (flow/privacy/dp.py) make it the noised equal-weight
        mean the privacy guarantee covers. Counters are rounded, not their maximum: the mean is what
        a folded or securely aggregated round can know (no client's own count survives the sum),
        and it counts the batches the averaged statistics stand for. Rules whose updates are not
        params (FedBuff's deltas), whose contributions carry other weights (FedNova's site
        partials) or whose statistics must resist bad clients (the robust rules) override this."""
        like = OrderedDict((n, global_params[n]) for n in names)
        kinds = self.kinds_of(global_params)
        return OrderedDict((n, np.rint(a).astype(a.dtype) if kinds[n] == COUNT and is_float(a) else a)
                           for n, a in weighted_mean(updates, like).items())

    def bind(self, clients: int, store_url: str | None) -> None:
        """Told by the driver before round 1: how many clients the job has, and the store's URL."""

    def configure(self, rnd: int, clients: list[int], profiles: dict[str, np.ndarray]) -> dict[int, Instructions]:
        """Extra per-client instructions merged into each train task (none by default)."""
        return {c: {} for c in clients}

    def check_answer(self, u: ClientUpdate, sent: Instructions) -> None:
        """Check the fields this strategy reads from a client's answer (`sent`: what configure gave
        that client) as it arrives; raise ValueError to make it that client's failure."""

    def aggregate(self, rnd: int, global_params: Params, updates: list[ClientUpdate],
                  failures: list[Failure]) -> Params:
        raise NotImplementedError

    def state(self) -> Params:
        return OrderedDict()

    def load_state(self, state: Params) -> None:
        if state:
            raise ValueError(f"strategy {self.name!r} keeps no state, checkpoint has {list(state)}")


def cast_like(value: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """A float64 result back in the global tensor's dtype (integer buffers are rounded)."""
    return value.astype(ref.dtype) if is_float(ref) else np.rint(value).astype(ref.dtype)


def example_weights(updates: list[ClientUpdate]) -> np.ndarray:
    """Each update's share of the aggregate: examples x scale (a stale update weighs less), summing to 1."""
    if not updates:
        raise ValueError("cannot aggregate zero updates")
    w = np.array([u.num_examples * u.scale for u in updates], dtype=np.float64)
    if w.sum() <= 0:
        raise ValueError("updates carry zero examples in total")
    return w / w.sum()


CHUNK = 1 << 15  # elements per slice: the slice's accumulators and temporaries stay in L2
GROUP = 16  # float32 tensors: clients summed in float32 before folding into the float64 total


def weighted_sum(tensors: list[np.ndarray], weights: np.ndarray, exact: bool = False) -> np.ndarray:
    """``sum_i weights[i] * tensors[i]`` as float64, one cache-sized slice at a time.

    Aggregation is memory-bound. Summing whole tensors would stream full-size accumulators and
    temporaries through memory once per client; slicing keeps them in cache, so each client's
    tensor is read from memory once. float32 tensors are multiplied and summed in float32 (mixed
    float32/float64 arithmetic is several times slower in numpy) in groups of GROUP clients, each
    group folded into a float64 total: the error stays that of a 16-term float32 sum however many
    clients there are. Together this runs at or above the speed of a plain copy of the same
    bytes (bench/throughput.py). `exact` sums in float64 throughout, for callers that subtract
    nearly equal large terms afterwards (FedNova).
    """
    first = np.asarray(tensors[0])
    f32 = not exact and all(np.asarray(t).dtype == np.float32 for t in tensors)
    work = np.float32 if f32 else np.float64
    w = np.asarray(weights, dtype=work)
    out = np.empty(first.shape, dtype=np.float64)
    flat_out = out.reshape(-1)
    flats = [np.asarray(t).reshape(-1) for t in tensors]
    n = flat_out.size
    part, tmp = np.empty(min(CHUNK, n), dtype=work), np.empty(min(CHUNK, n), dtype=work)
    group = GROUP if f32 else len(flats)  # float64 work needs no folding: one group
    for s in range(0, n, CHUNK):
        e = min(s + CHUNK, n)
        acc, t = part[:e - s], tmp[:e - s]
        for g in range(0, len(flats), group):
            np.multiply(flats[g][s:e], w[g], out=acc)
            for i in range(g + 1, min(g + group, len(flats))):
                np.multiply(flats[i][s:e], w[i], out=t)
                acc += t
            if g == 0:
                flat_out[s:e] = acc
            else:
                flat_out[s:e] += acc
    return out


def server_step(updates: list[ClientUpdate], global_params: Params,
                step: Callable[[str, np.ndarray, np.ndarray], np.ndarray],
                kinds: Mapping[str, str] | None = None) -> Params:
    """A server optimiser's round: ``step(name, G, delta)`` returns the new float64 tensor from the
    global one and the pseudo-gradient ``delta = avg - G`` (avg: the example-weighted mean of the
    clients), for the trained weights; everything else takes the plain weighted mean (`step_toward`)."""
    return step_toward(global_params, weighted_mean(updates, global_params), step, kinds)


def step_toward(global_params: Params, agg: Params,
                step: Callable[[str, np.ndarray, np.ndarray], np.ndarray],
                kinds: Mapping[str, str] | None = None) -> Params:
    """``step(name, G, agg - G)`` for every ``weight`` tensor (apps/kinds.py), in float64, cast
    back; the others (statistics, counters, frozen parameters) are taken from `agg` as they are,
    and `step` is never called for them, so no server state is kept for them either. `kinds`:
    inferred from the params when not given."""
    kinds = kinds if kinds is not None else infer_kinds(global_params)
    out: Params = OrderedDict()
    for name, g in global_params.items():
        if kinds.get(name, WEIGHT) != WEIGHT or not is_float(g):
            out[name] = agg[name]
            continue
        g64 = np.asarray(g, np.float64)
        out[name] = cast_like(step(name, g64, np.asarray(agg[name], np.float64) - g64), g)
    return out


class HeavyBall:
    """Server momentum on a round's pseudo-gradient (Hsu et al. 2019, FedAvgM).

    The server treats ``G - agg`` as a gradient: ``v <- momentum * v + (G - agg)``,
    ``G' = G - server_lr * v``. momentum 0 and server_lr 1 give back ``agg`` exactly. The velocity
    is checkpointed (``state``) so a resumed run takes the same next step.
    """

    def __init__(self, server_lr: float, momentum: float):
        self.server_lr, self.momentum = server_lr, momentum
        self.velocity: Params = OrderedDict()

    @property
    def identity(self) -> bool:
        return self.momentum == 0 and self.server_lr == 1

    def step(self, name: str, g: np.ndarray, delta: np.ndarray) -> np.ndarray:
        v = self.momentum * self.velocity.get(name, np.zeros_like(g)) - delta
        self.velocity[name] = v
        return g - self.server_lr * v

    def apply(self, global_params: Params, agg: Params, kinds: Mapping[str, str] | None = None) -> Params:
        """The step from ``global_params`` toward an aggregate (weights; the others are taken as
        they are). A velocity an older checkpoint kept for a statistic is dropped here: it is
        never used again."""
        kinds = kinds if kinds is not None else infer_kinds(global_params)
        for name in [n for n in self.velocity if kinds.get(n, WEIGHT) != WEIGHT]:
            del self.velocity[name]
        return agg if self.identity else step_toward(global_params, agg, self.step, kinds)

    def state(self) -> Params:
        return OrderedDict((f"v/{k}", v) for k, v in self.velocity.items())

    def load_state(self, state: Params) -> None:
        self.velocity = OrderedDict((k[2:], np.asarray(v, np.float64)) for k, v in state.items()
                                    if k.startswith("v/"))


def weighted_mean(updates: list[ClientUpdate], like: Params) -> Params:
    """Example-weighted mean of client params (streamed: no stacking of k copies).

    Each update weighs ``num_examples * scale``; scale is below 1 only for a late update carried
    into a later round (staleness weighting).

    Accumulates in float64 for exactness across many clients, then casts back to each tensor's dtype.
    Non-float tensors (e.g. BatchNorm's num_batches_tracked) take the weighted mean rounded.
    """
    p = example_weights(updates)
    if len(updates) == 1:  # one contribution (a folded round's mean, secagg's sum): itself, not a copy
        return OrderedDict((name, a if (a := np.asarray(updates[0].params[name])).dtype == ref.dtype else
                            cast_like(a, ref)) for name, ref in like.items())
    return OrderedDict((name, cast_like(weighted_sum([u.params[name] for u in updates], p), ref))
                       for name, ref in like.items())
