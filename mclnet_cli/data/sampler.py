"""Cross-modality P x K batch sampler.

Each step takes P identities and, for each, K visible and K infrared images
(with replacement when an identity has fewer than K, or always with
``with_replacement``, as the authors' sampler). By default identities are
walked in shuffled cycles (every id before any repeats); ``identity_draw=
"independent"`` draws P distinct ids afresh for each batch, as the authors' code. The plan of an epoch is a
pure function of (seed, epoch), so runs are reproducible whatever the number of
DataLoader workers, and DDP ranks can each take a disjoint share of the steps.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np

from mclnet_cli.config import IdentityDraw, StepsRule, names
from mclnet_cli.errors import DataError

#: one element of a batch: (visible index, infrared index, label, augmentation seed)
Key = tuple[int, int, int, int]


def default_steps(num_visible: int, num_infrared: int, num_ids: int, num_instances: int, rule: str = "method") -> int:
    """Steps of an epoch (``train.steps_rule``), N = max(#visible, #infrared) training images.

    ``method``: N // (P*K), about N images per modality (at least 1). ``official``:
    int(N / (P*K)) + 1, as the authors' IdentitySampler, which builds one batch of
    indices more than fit in N (also when P*K divides N).
    """
    if rule not in names(StepsRule):
        raise DataError(f"train.steps_rule: unknown {rule!r}; choose from: {', '.join(names(StepsRule))}")
    n, batch = max(num_visible, num_infrared), num_ids * num_instances
    return n // batch + 1 if rule == "official" else max(1, n // batch)


class CrossModalityBatchSampler:
    """Batch sampler yielding lists of :data:`Key` (P*K per batch, identity-major order).

    ``visible_labels[i]`` / ``infrared_labels[j]`` are the labels of the visible /
    infrared training images. Only labels present in both modalities are sampled.
    ``steps_per_epoch`` is the number of steps over all ranks; each of the
    ``world_size`` ranks gets ``ceil(steps / world_size)`` of them; without it,
    ``steps_rule`` (:func:`default_steps`) says how many there are.
    """

    def __init__(
        self,
        visible_labels: Sequence[int],
        infrared_labels: Sequence[int],
        *,
        num_ids: int,
        num_instances: int,
        seed: int = 0,
        steps_per_epoch: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        identity_draw: str = "cycle",
        with_replacement: bool = False,
        steps_rule: str = "method",
    ) -> None:
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside 0..{world_size - 1}")
        self.visible = _group(visible_labels)
        self.infrared = _group(infrared_labels)
        self.labels = sorted(set(self.visible) & set(self.infrared))
        if len(self.labels) < num_ids:
            raise DataError(
                f"the sampler needs at least {num_ids} identities (data.num_ids) with both visible and infrared "
                f"training images; found {len(self.labels)}"
            )
        self.num_ids = num_ids
        self.num_instances = num_instances
        if identity_draw not in names(IdentityDraw):
            raise DataError(f"data.identity_draw: unknown {identity_draw!r}; choose from: {', '.join(names(IdentityDraw))}")
        self.identity_draw = identity_draw
        self.with_replacement = with_replacement
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        default = default_steps(len(visible_labels), len(infrared_labels), num_ids, num_instances, steps_rule)  # checks the rule too
        total = steps_per_epoch or default
        self.steps_per_rank = max(1, math.ceil(total / world_size))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the plan of ``epoch`` (call before iterating, as with DistributedSampler)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps_per_rank

    def plan(self, epoch: int) -> list[list[Key]]:
        """All steps of ``epoch`` over every rank (``len * world_size`` of them)."""
        rng = np.random.default_rng([self.seed, epoch])
        steps = self.steps_per_rank * self.world_size
        order: list[int] = []
        batches: list[list[Key]] = []
        for _ in range(steps):
            if self.identity_draw == "independent":  # the authors' sampler: P fresh distinct ids per batch
                chosen = [int(x) for x in rng.choice(self.labels, self.num_ids, replace=False)]
                batches.append(self._batch(chosen, rng))
                continue
            if len(order) < self.num_ids:  # walk all identities before repeating any
                order.extend(int(i) for i in rng.permutation(self.labels))
            chosen, order = order[: self.num_ids], order[self.num_ids :]
            if len(set(chosen)) < self.num_ids:  # a reshuffle boundary repeated an id
                rest = [x for x in self.labels if x not in chosen]
                chosen = list(dict.fromkeys(chosen))
                chosen += [int(x) for x in rng.choice(rest, self.num_ids - len(chosen), replace=False)]
            batches.append(self._batch(chosen, rng))
        return batches

    def _batch(self, chosen: list[int], rng: np.random.Generator) -> list[Key]:
        """K visible and K infrared images of each chosen label, identity-major."""
        batch: list[Key] = []
        for label in chosen:
            vis = _draw(self.visible[label], self.num_instances, rng, self.with_replacement)
            ir = _draw(self.infrared[label], self.num_instances, rng, self.with_replacement)
            seeds = rng.integers(0, 2**31 - 1, size=self.num_instances)
            batch.extend((v, i, label, int(s)) for v, i, s in zip(vis, ir, seeds))
        return batch

    def __iter__(self) -> Iterator[list[Key]]:
        plan = self.plan(self.epoch)
        return iter(plan[self.rank :: self.world_size])


def _group(labels: Sequence[int]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        groups[int(label)].append(index)
    return dict(groups)


def _draw(indices: list[int], k: int, rng: np.random.Generator, always_replace: bool = False) -> list[int]:
    """K indices: without replacement when there are enough (unless ``always_replace``), else with."""
    return [int(x) for x in rng.choice(indices, size=k, replace=always_replace or len(indices) < k)]
