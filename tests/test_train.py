"""Training end to end on CPU: run directory, checkpoints, resume, atomic saves, NaN stop, refusals.

Every run is the tiny preset shrunk further (resnet18 at 64x32, P=2 ids x K=2
images per modality, 2 steps an epoch) on the fake prepared dataset of small
random images (conftest's ``prepared_dataset``), so each run takes seconds.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mclnet_cli.cli.app import app
from mclnet_cli.config import load_config
from mclnet_cli.data.records import Modality
from mclnet_cli.engine import train as train_mod
from mclnet_cli.engine.checkpoint import load_checkpoint, load_model
from mclnet_cli.engine.optim import lr_factor
from mclnet_cli.engine.runlog import read_metrics
from mclnet_cli.engine.train import Reporter, fit, rng_state, set_rng_state
from mclnet_cli.errors import ConfigError, DataError, TrainingError

runner = CliRunner()

FAST = [
    "data.num_ids=2",
    "data.num_instances=2",
    "data.workers=0",
    "train.steps_per_epoch=2",
    "train.log_every=1",
    "optim.warmup_epochs=2",
    "optim.milestones=[3]",
    "loss.mmd_gate=null",  # every term from the first step, as these tests were written (the gate: test_losses.py)
    "optim.head_only_epochs=0",  # the backbone trains from the first step too (the hold: test_optim.py)
]


def _config(*extra: str):
    return load_config("tiny", [*FAST, *extra])


class Recorder(Reporter):
    """Keeps the events, optionally runs a hook on each step."""

    def __init__(self, on_step=None, on_epoch_start=None) -> None:
        self.events: list[tuple] = []
        self.on_step, self.on_epoch_start = on_step, on_epoch_start

    def start(self, info):
        self.events.append(("start", dict(info)))

    def epoch_start(self, epoch, steps):
        self.events.append(("epoch_start", epoch, steps))
        if self.on_epoch_start:
            self.on_epoch_start(epoch)

    def step(self, epoch, step, stats):
        self.events.append(("step", epoch, step, dict(stats)))
        if self.on_step:
            self.on_step(epoch, step)

    def epoch_end(self, epoch, row):
        self.events.append(("epoch_end", epoch, dict(row)))


def test_cli_train_end_to_end_writes_run_dir_and_checkpoint_loads(prepared_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", str(prepared_dataset), "--out", str(out), "--device", "cpu", "--json", "--quiet"]
    for item in [*FAST, "train.epochs=2"]:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "complete" and summary["epochs_completed"] == 2
    assert summary["best_val"] is None and "no validation" in summary["protocol"]
    assert "BNNeck" in summary["feature"]
    assert set(summary["final_losses"]) >= {"total", "id", "supcon", "hks", "mmd"}

    for name in ("config.yaml", "environment.json", "metrics.jsonl", "summary.json", "last.pt"):
        assert (out / name).is_file(), name
    assert not (out / "best.pt").exists()
    assert load_config(out / "config.yaml") == _config("train.epochs=2")
    env = json.loads((out / "environment.json").read_text())
    assert env["device"] == "cpu" and env["seed"] == 0 and env["torch"] == torch.__version__
    assert {"python", "torchvision", "mclnet_version", "command", "started", "torch_threads"} <= set(env)
    assert {"cuda", "gpu", "world_size", "cwd", "platform", "cpu_count"} <= set(env)
    assert env["gpu"] is None and env["world_size"] == 1
    from mclnet_cli.info import environment_info

    shared = environment_info()  # the same collector as `mclnet info`, plus the run's own facts
    assert set(shared) - {"mclnet", "device"} <= set(env) and env["mclnet_version"] == shared["mclnet"]

    rows = read_metrics(out)
    epochs = [r for r in rows if r["kind"] == "epoch"]
    steps = [r for r in rows if r["kind"] == "step"]
    assert [r["epoch"] for r in epochs] == [0, 1]
    assert len(steps) == 4  # log_every=1, 2 steps x 2 epochs
    for row in epochs:
        expected = lr_factor(row["epoch"], 2, (3,), 0.1)
        assert row["lr"]["head"] == pytest.approx(_config().optim.head_lr * expected)
        assert row["lr"]["backbone"] == pytest.approx(_config().optim.lr * expected)
        assert row["images_per_s"] > 0 and row["epoch_time_s"] > 0
        assert set(row["parts"]) >= {"id", "supcon", "hks", "mmd"}
        assert np.isfinite(row["loss"])

    loaded = load_model(out / "last.pt")
    assert loaded.payload["epoch"] == 2 and loaded.label_map == {pid: pid - 1 for pid in range(1, 10)}  # train + val ids
    images = torch.randn(3, 3, 64, 32)
    emb = loaded.model.embed(images, Modality.INFRARED)
    assert emb.shape == (3, loaded.model.feature_dim)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)

    # --resume without --preset continues from the run's own config.yaml
    again = ["train", "--data", str(prepared_dataset), "--out", str(out), "--resume", "--set", "train.epochs=3", "--json", "-q"]
    result = runner.invoke(app, again)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["epochs_completed"] == 3
    assert [r["epoch"] for r in read_metrics(out) if r["kind"] == "epoch"] == [0, 1, 2]
    assert load_config(out / "config.yaml").train.epochs == 3


def test_resume_restores_optimizer_scheduler_and_matches_uninterrupted_run(prepared_dataset: Path, tmp_path: Path) -> None:
    # uninterrupted reference: 2 epochs in one go
    full = fit(_config("train.epochs=2"), prepared_dataset, tmp_path / "full", device="cpu")
    # the same run, stopped after epoch 1 and resumed to 2
    first = fit(_config("train.epochs=1"), prepared_dataset, tmp_path / "split", device="cpu")
    assert first.epochs_completed == 1
    saved = load_checkpoint(tmp_path / "split" / "last.pt")
    assert saved["epoch"] == 1 and saved["scheduler"]["last_epoch"] == 1

    captured = {}
    real_build = train_mod.build_optimizer

    def spy_build(model, cfg):
        captured["optimizer"] = real_build(model, cfg)
        return captured["optimizer"]

    def check_restored(epoch: int) -> None:
        # before any step of the resumed epoch: momentum buffers and lrs are the saved ones
        optimizer = captured["optimizer"]
        state = optimizer.state_dict()
        assert epoch == 1
        assert len(state["state"]) == len(saved["optimizer"]["state"]) > 0
        for key, value in saved["optimizer"]["state"].items():
            assert torch.equal(state["state"][key]["momentum_buffer"], value["momentum_buffer"])
        lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
        assert lrs["backbone"] == pytest.approx(_config().optim.lr * lr_factor(1, 2, (3,), 0.1))
        assert lrs["head"] == pytest.approx(_config().optim.head_lr * lr_factor(1, 2, (3,), 0.1))
        captured["checked"] = True

    # something else consumes RNG between the two processes of a real resume
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    mp = pytest.MonkeyPatch()
    mp.setattr(train_mod, "build_optimizer", spy_build)
    try:
        resumed = fit(_config("train.epochs=2"), prepared_dataset, tmp_path / "split", resume=True, device="cpu",
                      reporter=Recorder(on_epoch_start=check_restored))
    finally:
        mp.undo()
    assert captured.get("checked")
    assert resumed.epochs_completed == full.epochs_completed == 2
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    assert b["epoch"] == 2 and b["scheduler"]["last_epoch"] == 2
    for name, tensor in a["model"].items():
        assert torch.allclose(tensor.float(), b["model"][name].float(), atol=1e-5), name
    rows = read_metrics(tmp_path / "split")
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [0, 1]
    env = json.loads((tmp_path / "split" / "environment.json").read_text())
    assert len(env["resumes"]) == 1


def test_failed_save_leaves_previous_last_checkpoint_intact(prepared_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "run"
    fit(_config("train.epochs=1"), prepared_dataset, out, device="cpu")
    before = (out / "last.pt").read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        fit(_config("train.epochs=2"), prepared_dataset, out, resume=True, device="cpu")
    monkeypatch.undo()
    assert (out / "last.pt").read_bytes() == before
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_nan_loss_stops_with_the_part_name_and_a_loadable_checkpoint(prepared_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    from mclnet_cli.losses import Criterion, LossOutput

    real_from_config = Criterion.from_config.__func__
    calls = {"n": 0}

    def poisoned(cls, loss_cfg):
        criterion = real_from_config(cls, loss_cfg)

        def call(output, labels, modalities):
            result = criterion(output, labels, modalities)
            calls["n"] += 1
            if calls["n"] == 4:  # epoch 2 (1-based), step 2
                parts = dict(result.parts, mmd=torch.tensor(float("nan")))
                return LossOutput(total=result.total * float("nan"), parts=parts)
            return result

        return call

    monkeypatch.setattr(Criterion, "from_config", classmethod(poisoned))
    out = tmp_path / "run"
    with pytest.raises(TrainingError) as info:
        fit(_config("train.epochs=3"), prepared_dataset, out, device="cpu")
    message = str(info.value)
    assert "'mmd'" in message and "nan" in message and "epoch 2/3 step 2/2" in message
    assert str(out / "last.pt") in message
    loaded = load_model(out / "last.pt")
    assert loaded.payload["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in loaded.payload["model"].values() if v.is_floating_point())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped" and "'mmd'" in summary["message"]


def test_ctrl_c_keeps_last_completed_epoch(prepared_dataset: Path, tmp_path: Path) -> None:
    def interrupt(epoch: int, step: int) -> None:
        if epoch == 1 and step == 0:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    result = fit(_config("train.epochs=3"), prepared_dataset, out, device="cpu", reporter=Recorder(on_step=interrupt))
    assert result.status == "interrupted" and result.epochs_completed == 1
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"


def test_validation_on_held_out_ids_writes_best_checkpoint(prepared_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = _config("train.epochs=1", "train.eval_every=1", "data.train_on_val=false")
    result = fit(cfg, prepared_dataset, out, device="cpu")
    assert result.best is not None
    assert result.best["queries"] == 6 and result.best["gallery"] == 6  # val: 3 ids x 2 infrared / 2 visible
    # the val numbers are best.pt's, recomputed by hand: val infrared queries, all val visible images as gallery
    from mclnet_cli.data.records import load_prepared
    from mclnet_cli.engine.extract import extract_features
    from mclnet_cli.metrics import rank_metrics

    model = load_model(out / "best.pt").model
    val = load_prepared(prepared_dataset)
    queries, gallery = val.select("val", Modality.INFRARED), val.select("val", Modality.VISIBLE)
    embed = lambda group, m: extract_features(  # noqa: E731
        model, [s.path for s in group], m, height=cfg.data.height, width=cfg.data.width, feature="bn"
    ).features
    expected = rank_metrics(
        1.0 - embed(queries, Modality.INFRARED) @ embed(gallery, Modality.VISIBLE).T,
        np.array([s.pid for s in queries]), np.array([s.pid for s in gallery]),
        np.array([s.cam for s in queries]), np.array([s.cam for s in gallery]), cfg.eval.protocol,
    )
    for key, value in (("mAP", expected.mAP), ("rank1", expected.rank(1)), ("rank5", expected.rank(5)),
                       ("mINP", expected.mINP)):
        assert result.best[key] == pytest.approx(100.0 * value, abs=1e-3), key
    best = load_checkpoint(out / "best.pt")
    assert best["kind"] == "best" and "not the test set" in best["protocol"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_val"]["mAP"] == pytest.approx(result.best["mAP"])
    assert "val" in summary["protocol"] and "not the test set" in summary["protocol"]


def test_validation_refused_when_val_ids_are_trained_on(prepared_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train_on_val"):
        fit(_config("train.eval_every=1"), prepared_dataset, tmp_path / "run", device="cpu")
    assert not (tmp_path / "run").exists()


def test_regdb_trial_mismatch_is_refused(prepared_dataset: Path, tmp_path: Path) -> None:
    meta = json.loads((prepared_dataset / "meta.json").read_text())
    other = tmp_path / "regdb"
    other.mkdir()
    (other / "manifest.jsonl").write_text((prepared_dataset / "manifest.jsonl").read_text())
    (other / "meta.json").write_text(json.dumps({**meta, "dataset": "regdb", "trial": 2}))
    with pytest.raises((ConfigError, DataError), match="trial 2"):
        fit(_config("data.trial=1"), other, tmp_path / "run", device="cpu")


def test_non_empty_run_dir_is_refused_without_resume(prepared_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["train", "--preset", "tiny", "--data", str(prepared_dataset), "--out", str(out)])
    assert result.exit_code == 1
    assert "not empty" in result.output and "--resume" in result.output
    assert "Traceback" not in result.output


def test_resume_refuses_a_different_model(prepared_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    fit(_config("train.epochs=1"), prepared_dataset, out, device="cpu")
    with pytest.raises(ConfigError, match="model.arch"):
        fit(_config("train.epochs=2", "model.arch=resnet34"), prepared_dataset, out, resume=True, device="cpu")
    result = runner.invoke(app, ["train", "--data", str(prepared_dataset), "--out", str(tmp_path / "none"), "--resume"])
    assert result.exit_code == 1 and "config.yaml" in result.output


def test_rng_state_round_trips_through_weights_only_load(tmp_path: Path) -> None:
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    state = rng_state()
    expected = (torch.rand(3), random.random(), np.random.rand(2))
    torch.save(state, tmp_path / "rng.pt")
    torch.manual_seed(9)
    random.seed(9)
    np.random.seed(9)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1]
    assert np.array_equal(np.random.rand(2), expected[2])


def test_cli_reports_interruption_with_a_resume_hint(prepared_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "my run"

    def interrupted_fit(config, data_dir, out_dir, *, resume, device, reporter, init=None):
        return train_mod.TrainResult(
            out_dir=Path(out_dir), status="interrupted", epochs=3, epochs_completed=1,
            last_checkpoint=Path(out_dir) / "last.pt", best_checkpoint=None, final_losses={}, best=None,
            time_s=1.0, images_per_s=1.0, summary={"status": "interrupted"},
        )

    monkeypatch.setattr(train_mod, "fit", interrupted_fit)
    out.mkdir()
    (out / "last.pt").write_bytes(b"")  # the hint offers --resume only when a checkpoint exists
    result = runner.invoke(app, ["train", "--preset", "tiny", "--data", str(prepared_dataset), "--out", str(out), "-q"])
    assert result.exit_code == 130
    assert "interrupted" in result.output and "--resume" in result.output and "Traceback" not in result.output
    assert f"--out '{out}' --resume" in " ".join(result.output.split())  # quoted for the shell


ONE_STEP = ("train.steps_per_epoch=1", "data.height=32", "data.width=16")


@pytest.mark.parametrize(
    "weights",
    [
        {},  # the method's defaults: every parameter is trained
        {"supcon": 0, "hks": 0},  # projection heads unused
        {"supcon": 0},
        {"hks": 0},
        {"id": 0},  # BNNeck unused
        {"id": 0, "supcon": 0, "hks": 0, "mmd": 0, "triplet": 1},
    ],
)
def test_unused_parameters_expected_matches_the_gradients(weights) -> None:
    from mclnet_cli.losses import Criterion
    from mclnet_cli.model import build_model

    # no ramp: it needs the identity term, which two cases switch off
    cfg = _config(*ONE_STEP, "loss.mmd_ramp=null", *(f"loss.weights.{k}={v}" for k, v in weights.items()))
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes=2)
    model.train()
    output = model(visible=torch.randn(4, 3, 32, 16), infrared=torch.randn(4, 3, 32, 16))
    labels = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    modalities = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    Criterion.from_config(cfg.loss)(output, labels, modalities).total.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert train_mod.unused_parameters_expected(cfg.loss.weights) == bool(unused), unused
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in train_mod.unused_parameters(model, cfg.loss.weights)) == sorted(unused)
    assert train_mod.unused_parameters_expected({**{"id": 1.0, "supcon": 5.0, "hks": 5.0}, **weights}) == bool(unused)


def test_every_loss_term_says_which_model_outputs_it_reads() -> None:
    from mclnet_cli.losses.criterion import TERM_OUTPUTS, TERMS
    from mclnet_cli.model import OUTPUTS

    assert set(TERM_OUTPUTS) == set(TERMS)
    assert train_mod.outputs_read({"supcon": 1.0, "id": 0.0}) == {o for o in OUTPUTS if o.startswith("features.")}
    assert train_mod.outputs_read({"id": 1.0, "mmd": 0.5}) == {"logits", "features.layer4"}
    assert train_mod.outputs_read({"a_new_term": 1.0}) == set(OUTPUTS)  # unlisted: nothing frozen on its account


def test_epoch_row_is_written_before_last_checkpoint(prepared_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "run"
    fit(_config("train.epochs=1", *ONE_STEP), prepared_dataset, out, device="cpu")

    def killed_save(*args, **kwargs):  # the process dies while last.pt of epoch 2 is being saved
        raise OSError("killed")

    monkeypatch.setattr(torch, "save", killed_save)
    with pytest.raises(OSError, match="killed"):
        fit(_config("train.epochs=2", *ONE_STEP), prepared_dataset, out, resume=True, device="cpu")
    monkeypatch.undo()
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert [r["epoch"] for r in read_metrics(out) if r["kind"] == "epoch"] == [0, 1]  # the row survived
    # resume re-runs epoch 2 and its row is not duplicated
    result = fit(_config("train.epochs=2", *ONE_STEP), prepared_dataset, out, resume=True, device="cpu")
    assert result.status == "complete" and result.epochs_completed == 2
    assert [r["epoch"] for r in read_metrics(out) if r["kind"] == "epoch"] == [0, 1]
    assert load_checkpoint(out / "last.pt")["epoch"] == 2


def test_resume_with_fewer_epochs_is_refused_and_equal_is_already_complete(prepared_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    fit(_config("train.epochs=2", *ONE_STEP), prepared_dataset, out, device="cpu")
    before = {name: (out / name).read_bytes() for name in ("last.pt", "metrics.jsonl", "summary.json")}

    result = runner.invoke(app, ["train", "--data", str(prepared_dataset), "--out", str(out), "--resume",
                                 "--set", "train.epochs=1", "--device", "cpu", "-q"])
    assert result.exit_code == 1, result.output
    assert "already has 2 epochs" in result.output and "train.epochs=M with M > 2" in result.output
    assert "Traceback" not in result.output
    assert {name: (out / name).read_bytes() for name in before} == before  # nothing touched

    again = fit(_config("train.epochs=2", *ONE_STEP), prepared_dataset, out, resume=True, device="cpu")
    assert again.status == "complete" and again.epochs_completed == 2 == again.epochs
    assert (out / "last.pt").read_bytes() == before["last.pt"]  # nothing was trained
    assert [r["epoch"] for r in read_metrics(out) if r["kind"] == "epoch"] == [0, 1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["epochs_completed"] == 2
    assert "already complete" in summary["message"]
    assert summary["final_losses"] == json.loads(before["summary.json"])["final_losses"]


def test_ctrl_c_outside_the_epoch_loop_never_escapes_fit(prepared_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    real_fit = fit

    def fit_(*args, **kwargs):  # a leaked KeyboardInterrupt fails this test instead of stopping pytest
        try:
            return real_fit(*args, **kwargs)
        except KeyboardInterrupt:
            pytest.fail("fit let a KeyboardInterrupt escape")

    # during setup of a new run: nothing saved, and the CLI says so (exit 130, no --resume hint)
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        mp.setattr(train_mod, "load_prepared", ctrl_c)
        result = fit_(_config("train.epochs=1", *ONE_STEP), prepared_dataset, out, device="cpu")
        assert result.status == "interrupted" and result.epochs_completed == 0
        assert not out.exists()
        cli = runner.invoke(app, ["train", "--preset", "tiny", "--data", str(prepared_dataset), "--out", str(out), "-q"])
    assert cli.exit_code == 130
    assert "interrupted" in cli.output and "nothing to resume" in cli.output and "--resume" not in cli.output
    assert "Traceback" not in cli.output

    fit(_config("train.epochs=1", *ONE_STEP), prepared_dataset, out, device="cpu")
    # during setup of a resume: reports the epochs already in last.pt
    with monkeypatch.context() as mp:
        mp.setattr(train_mod, "build_optimizer", ctrl_c)
        result = fit_(_config("train.epochs=2", *ONE_STEP), prepared_dataset, out, resume=True, device="cpu")
    assert result.status == "interrupted" and result.epochs_completed == 1
    assert load_checkpoint(out / "last.pt")["epoch"] == 1

    # a second Ctrl-C while the summary is written after the loop
    with monkeypatch.context() as mp:
        mp.setattr(train_mod, "_write_summary", ctrl_c)
        result = fit_(_config("train.epochs=2", *ONE_STEP), prepared_dataset, out, resume=True, device="cpu")
    assert result.status == "interrupted" and result.epochs_completed == 2
    assert load_checkpoint(out / "last.pt")["epoch"] == 2


def test_a_run_saved_with_the_old_data_trial_key_loads_and_resumes(prepared_dataset: Path, tmp_path: Path) -> None:
    """Run directories and checkpoints written before data.trial became data.regdb_split still work."""
    import yaml

    from mclnet_cli.engine.checkpoint import save_checkpoint
    from mclnet_cli.engine.state import resume_conflicts

    out = tmp_path / "run"
    fit(_config("train.epochs=1", *ONE_STEP), prepared_dataset, out, device="cpu")
    # make the run look like one of the previous release: the key under its old name everywhere
    payload = load_checkpoint(out / "last.pt")
    payload["config"]["data"]["trial"] = payload["config"]["data"].pop("regdb_split")
    save_checkpoint(out / "last.pt", payload)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    saved["data"]["trial"] = saved["data"].pop("regdb_split")
    (out / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))

    assert load_model(out / "last.pt").config.data.regdb_split == 1
    assert resume_conflicts(payload["config"], _config("train.epochs=2", *ONE_STEP).to_dict()) == []
    # --resume without --preset reads the old config.yaml: one warning line, then the run goes on
    again = ["train", "--data", str(prepared_dataset), "--out", str(out), "--resume", "--set", "train.epochs=2", "--json", "-q"]
    result = runner.invoke(app, again)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["epochs_completed"] == 2
    assert "data.trial is deprecated, use data.regdb_split" in result.stderr
    assert load_config(out / "config.yaml").data.regdb_split == 1  # rewritten under the new name
    assert "trial" not in yaml.safe_load((out / "config.yaml").read_text())["data"]


def test_resume_of_a_run_saved_before_a_key_existed() -> None:
    """A key added since the run was saved counts as its default, not as a change."""
    from mclnet_cli.engine.state import resume_conflicts

    current = _config("train.epochs=2").to_dict()
    stored = json.loads(json.dumps(current))
    del stored["data"]["llcm_infrared_as_visible"], stored["train"]["health_from_epoch"]
    assert resume_conflicts(stored, current) == []
    moved = _config("train.epochs=2", "data.llcm_infrared_as_visible=true").to_dict()
    assert resume_conflicts(stored, moved) == ["data.llcm_infrared_as_visible (False -> True)"]


def test_base_channels_reaches_the_trained_checkpoint_and_resume_keeps_it(prepared_dataset: Path, tmp_path: Path) -> None:
    from mclnet_cli.engine.checkpoint import load_model

    out = tmp_path / "run"
    fit(_config("train.epochs=1", "model.base_channels=16", "model.pretrained=none"), prepared_dataset, out, device="cpu")
    loaded = load_model(out / "last.pt", device=torch.device("cpu"))
    assert loaded.model.feature_dim == 128 and loaded.model.backbone.shared[-1][0].conv1.out_channels == 128
    with pytest.raises(ConfigError, match="model.base_channels"):
        fit(_config("train.epochs=2"), prepared_dataset, out, resume=True, device="cpu")
