"""The benchmark scripts' own logic: what they compute and which settings reach the runs they time."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import ablation  # noqa: E402
import bench_load  # noqa: E402


def _row(variant: str, generator: str, seed: int, mAP: float) -> dict:
    return {"variant": variant, "generator": generator, "seed": seed, "mAP": mAP, "rank1": mAP / 2, "train_s": 100.0}


def test_ablation_divides_each_run_by_the_chance_of_its_own_seed() -> None:
    rows = [_row("full", "alt", 0, 20.0), _row("full", "alt", 1, 30.0)]
    chance_of = {("alt", 0): 10.0, ("alt", 1): 5.0}  # x chance 2.0 and 6.0: mean 4.00, std 2.83
    table = ablation.markdown(rows, chance_of, ["full"], ["alt"], "header")
    full = next(line for line in table.splitlines() if line.startswith(f"| {ablation.LABELS['full']}"))
    cells = [c.strip() for c in full.split("|")[1:-1]]
    assert cells[1] == "25.0 ± 7.1"  # mAP
    assert cells[3] == "4.00 ± 2.83"  # x chance, per seed (seed 0's chance for both would give 2.50 ± 0.71)
    chance = next(line for line in table.splitlines() if line.startswith("| chance"))
    assert [c.strip() for c in chance.split("|")[1:-1]][1] == "7.5 ± 3.5"


def test_bench_load_passes_its_settings_to_every_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cmd = bench_load.train_command(tmp_path / "d", tmp_path / "o", "2", 3, 10, ["data.workers=2"])
    assert cmd[cmd.index("--threads") + 1] == "2"
    assert cmd[-2:] == ["--set", "data.workers=2"]
    assert "--threads" not in bench_load.train_command(tmp_path / "d", tmp_path / "o", "default", 3, 10)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    env = bench_load.train_env({"OMP_WAIT_POLICY": "PASSIVE"})
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and "OMP_NUM_THREADS" not in env
    assert bench_load.parse_pairs(["A=1", "B=x=y"], "--env") == {"A": "1", "B": "x=y"}
    with pytest.raises(ValueError, match="'OMP_WAIT_POLICY': expected KEY=VALUE"):
        bench_load.parse_pairs(["OMP_WAIT_POLICY"], "--env")
    monkeypatch.setattr(sys, "argv", ["bench_load.py", "--env", "PASSIVE"])
    with pytest.raises(SystemExit) as exit_info:
        bench_load.main()
    assert exit_info.value.code == 2


def test_alt_attributes_counts_shared_attributes_and_correlates_numbers() -> None:
    import dataclasses

    import numpy as np

    import alt_attributes
    from alt_synthetic import draw_person

    rng = np.random.default_rng(0)
    base = draw_person(1, rng)
    people = {
        1: dataclasses.replace(base, pid=1, skirt=True, stature=0.8, hat="cap"),
        2: dataclasses.replace(base, pid=2, skirt=False, stature=0.7, hat="none"),
        3: dataclasses.replace(base, pid=3, skirt=True, stature=0.9, hat="none"),
    }
    probes, matches, baseline = np.array([1, 2, 3]), np.array([3, 2, 1]), np.array([2, 1, 2])
    out = alt_attributes.attribute_agreement(people, probes, matches, baseline)
    assert out["skirt"] == 1.0 and out["skirt_base"] == 0.0
    assert out["hat"] == round(1 / 3, 3) and out["hat_base"] == round(1 / 3, 3)  # (cap, none), (none, none), (none, cap)
    x, y = np.array([0.8, 0.7, 0.9]), np.array([0.9, 0.7, 0.8])
    reference = ((x - x.mean()) * (y - y.mean())).sum() / np.sqrt(((x - x.mean()) ** 2).sum() * ((y - y.mean()) ** 2).sum())
    assert out["stature_r"] == round(float(reference), 3)


def test_alt_attributes_redraws_the_persons_the_generator_drew(tmp_path: Path) -> None:
    """people_of follows generate_alt's random stream: the split it implies is the one written."""
    import numpy as np

    import alt_attributes
    from alt_synthetic import generate_alt

    generate_alt(tmp_path / "raw", ids=6, seed=3, images_per_camera=1)
    rng = np.random.default_rng([3, 77])
    drawn = [alt_attributes.draw_person(pid, rng) for pid in range(1, 7)]
    assert [p.pid for p in drawn] == list(alt_attributes.people_of(3, 6))
    assert all(a == b for a, b in zip(drawn, alt_attributes.people_of(3, 6).values()))
    order = [int(p) for p in rng.permutation(np.arange(1, 7))]
    written = (tmp_path / "raw" / "exp" / "train_id.txt").read_text().strip()
    assert written == ",".join(str(p) for p in sorted(order[:4]))


def test_bench_archive_redraws_chunks_and_its_recall_matches_exact_search(tmp_path: Path) -> None:
    import argparse

    import numpy as np

    import bench_archive

    archive = bench_archive.Archive(size=2500, dim=16, chunk=1000, clusters=20, noise=0.5)
    first = [x for _, _, x in archive.chunks()]
    again = [x for _, _, x in archive.chunks()]
    assert [len(x) for x in first] == [1000, 1000, 500] and all(np.array_equal(a, b) for a, b in zip(first, again))
    args = argparse.Namespace(size=2500, dim=16, chunk=1000, clusters=20, noise=0.5, queries=20, workdir=tmp_path)
    result = bench_archive.run_archive(args)
    assert result["lists_bytes"] == 2500 * (16 * 4 + 8) and not list(tmp_path.iterdir())  # work folder removed
    by_nprobe = {row["nprobe"]: row["recall_at_10"] for row in result["search"]}
    assert by_nprobe[max(by_nprobe)] == 1.0  # every cell probed: exact
    assert result["build_peak_anon_mb"] > 0


def test_modality_map_excludes_the_query_camera_and_equals_a_hand_ap() -> None:
    """benchmarks/modality_map.py: with the own camera excluded a query never finds itself, and the mAP
    is the mean of hand-computed average precisions over the queries that keep a match."""
    import numpy as np
    import modality_map

    # 3 images, unit vectors; pids 1, 1, 2; cameras 1, 2, 2. Query 0 (cam 1) ranks 1 then 2: AP 1 (pid 1 first).
    # Query 1 (cam 2) sees only image 0 (other camera): AP 1. Query 2 (cam 2) sees only image 0 (pid 1): no match.
    x = np.array([[1.0, 0.0], [0.9, np.sqrt(1 - 0.81)], [0.0, 1.0]], dtype=np.float32)
    pids, cams = np.array([1, 1, 2]), np.array([1, 2, 2])
    score, queries = modality_map.direction_map(x, x, pids, pids, cams, cams)
    assert (score, queries) == (100.0, 2)
    # now image 2 closer to query 0 than its match: ranked list [2, 1], AP of query 0 = 1/2
    y = np.array([[1.0, 0.0], [0.0, 1.0], [0.95, np.sqrt(1 - 0.9025)]], dtype=np.float32)
    score, queries = modality_map.direction_map(y, y, pids, pids, cams, cams)
    assert queries == 2 and score == pytest.approx(100.0 * (0.5 + 1.0) / 2)
