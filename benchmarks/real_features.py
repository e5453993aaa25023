"""Features of a trained checkpoint for the search benchmark: a visible gallery and infrared probes.

The identities are drawn fresh (the checkpoint never saw them): ``--people``
persons, ``--views`` visible images of each in the gallery, and ``--probes``
infrared images of gallery persons as queries, as in a cross-spectrum search.
Images come from the project's generator (or ``--generator alt``, the
independent one in benchmarks/alt_synthetic.py) and are embedded in memory
through each modality's own stream, ``bn`` feature, L2-normalised, exactly as
``mclnet index`` / ``mclnet query`` embed them. The .npz holds ``gallery``
[people * views, D] and ``queries`` [probes, D] (float32) and ``gallery_pids`` /
``query_pids``; pass it to ``bench_index.py --features``.

    python benchmarks/real_features.py RUN/last.pt --people 10000 --views 10 --probes 200 --out /tmp/real.npz
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

VISIBLE_CAMS = (1, 2, 4, 5)
INFRARED_CAMS = (3, 6)


def _renderer(generator: str):
    """(draw(pid, rng), render(person, infrared, cam, rng) -> PIL image) of one generator."""
    if generator == "project":
        from mclnet_cli.data.synthetic import draw_identity, render

        return draw_identity, lambda person, infrared, cam, rng: render(person, infrared, cam, rng)
    from alt_synthetic import draw_person
    from alt_synthetic import render as alt_render

    return draw_person, lambda person, infrared, cam, rng: alt_render(person, cam, rng)


def draw_features(
    checkpoint: Path, people: int, views: int, probes: int, generator: str = "project", seed: int = 0, batch: int = 512,
) -> dict[str, np.ndarray]:
    """Embed a fresh visible gallery and infrared probes of its persons (see the module docstring)."""
    from mclnet_cli import api

    model = api.load(checkpoint, "cpu")
    draw, render = _renderer(generator)
    rng = np.random.default_rng(seed)
    persons = [draw(10_000_000 + pid, rng) for pid in range(people)]  # pids far from any training set's
    gallery: list[np.ndarray] = []
    pending = []
    for i, person in enumerate(persons):
        for _ in range(views):
            pending.append(render(person, False, int(rng.choice(VISIBLE_CAMS)), rng))
        if len(pending) >= batch or i == people - 1:
            gallery.append(api.embed(model, pending, "visible", batch_size=128))
            pending = []
            print(f"\r  gallery {min(people, i + 1) * views:,} / {people * views:,}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    query_pids = np.sort(rng.choice(people, size=min(probes, people), replace=False))
    images = [render(persons[p], True, int(rng.choice(INFRARED_CAMS)), rng) for p in query_pids]
    queries = api.embed(model, images, "infrared", batch_size=128)
    return {
        "gallery": np.concatenate(gallery).astype(np.float32),
        "queries": queries.astype(np.float32),
        "gallery_pids": np.repeat(np.arange(people), views),
        "query_pids": query_pids,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--views", type=int, default=10, help="visible gallery images per person")
    parser.add_argument("--probes", type=int, default=200, help="infrared query images (one per sampled person)")
    parser.add_argument("--generator", choices=("project", "alt"), default="project")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    arrays = draw_features(args.checkpoint, args.people, args.views, args.probes, args.generator, args.seed)
    np.savez(args.out, **arrays)
    print(
        f"{arrays['gallery'].shape[0]:,} gallery and {arrays['queries'].shape[0]} probe features "
        f"(dim {arrays['gallery'].shape[1]}) in {time.perf_counter() - start:.0f} s -> {args.out}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
