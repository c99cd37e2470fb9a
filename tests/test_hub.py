"""Sharing: a run's pretrained/ folder (safetensors + config.json + model card) rebuilds the model with identical
logits, from a folder and from a hub repository (the hub's cache layout, offline), and push_to_hub uploads
exactly that folder (HfApi mocked: no network)."""
import json
import shutil

import pytest
import torch

from repro.checkpoint import load_checkpoint
from repro.config import Config
from repro.datasets import to_model_input
from repro.engine import build_dataset, build_model, train
from repro.hub import export_run, from_pretrained, pretrained_file, push_to_hub

# circulate-firing with a shared_t learnable surrogate: its rho is one tensor tied across layers by the engine's
# on_model_built hook, so the round trip also covers tensors that safetensors stores once
CONFIG = dict(model="resnet19", model_options={"width": 0.125}, num_steps=2, neuron="circulate_firing",
              surrogate="learnable", surrogate_options={"granularity": "shared_t"}, loss="pnb", dataset="digits",
              batch_size=16, eval_batch_size=16, epochs=1, lr=0.05, limit_train_batches=1, limit_eval_batches=1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("hub") / "run"
    summary = train(Config(**CONFIG, output_dir=str(run_dir)))
    return run_dir, summary


@pytest.fixture(scope="module")
def data():
    """(test set, 8 of its images as model input)."""
    dataset = build_dataset(Config(**CONFIG), "test")
    return dataset, to_model_input(torch.stack([dataset[i][0] for i in range(8)]), "static")


def reference_logits(checkpoint, data):
    """Logits of the engine's model with a checkpoint's weights, loaded the engine's way (not via safetensors)."""
    state = load_checkpoint(checkpoint)
    model = build_model(Config.from_dict(state["config"]), data[0])
    model.load_state_dict(state["model"])
    with torch.no_grad():
        return model.eval()(data[1])


def test_round_trip_from_a_folder_gives_identical_logits(run, data):
    run_dir, summary = run
    model = from_pretrained(run_dir / "pretrained")
    assert not model.training
    with torch.no_grad():
        assert torch.equal(model(data[1]), reference_logits(run_dir / "checkpoint.pt", data))
    rhos = {id(m.rho) for m in model.modules() if hasattr(m, "rho")}
    assert len(rhos) == 1  # the tie is rebuilt, not two copies
    config = model.pretrained_config
    assert config["weights"] == {"selected": "final epoch", "epoch": 1}
    assert config["results"]["test_accuracy"] == summary["test_accuracy"]
    assert Config.from_dict(config["training_config"]) == Config(**CONFIG, output_dir=str(run_dir))


def test_model_card_states_this_runs_numbers(run):
    run_dir, summary = run
    card = (run_dir / "pretrained" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: snn-repro\n")
    assert f"| final-epoch test top-1 accuracy (%) | {summary['test_accuracy']:.2f} |" in card
    assert f"| firing rate, final epoch (mean over spiking layers) | {summary['firing_rate']:.4f} |" in card
    energy = summary["energy"]
    assert f"{energy['snn_energy_mj']:.4g} / {energy['ann_energy_mj']:.4g}" in card
    assert energy["ann_over_snn"] == pytest.approx(energy["ann_energy_mj"] / energy["snn_energy_mj"])
    assert "T = 2" in card and "circulate_firing" in card
    recipe = json.loads((run_dir / "pretrained" / "config.json").read_text())["recipe"]
    assert f"`recipes/{recipe['command']}` with `{' '.join(recipe['extra_flags'])}`" in card


def test_from_a_hub_repository_in_the_cache_offline(run, data, tmp_path):
    """The hub id resolves through huggingface_hub's own download code against its cache layout (HF_HUB_OFFLINE=1
    in conftest, so a miss would fail instead of reaching the network)."""
    run_dir, _ = run
    commit = "0" * 40
    snapshot = tmp_path / "models--someone--snn" / "snapshots" / commit
    shutil.copytree(run_dir / "pretrained", snapshot)
    (tmp_path / "models--someone--snn" / "refs").mkdir()
    (tmp_path / "models--someone--snn" / "refs" / "main").write_text(commit)
    model = from_pretrained("someone/snn", cache_dir=tmp_path)
    with torch.no_grad():
        assert torch.equal(model(data[1]), reference_logits(run_dir / "checkpoint.pt", data))


def test_export_of_the_best_epoch(run, data, tmp_path):
    run_dir, _ = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    folder = export_run(copy, weights="best")
    model = from_pretrained(folder)
    best_epoch = load_checkpoint(copy / "best_model.pt")["epoch"]
    assert model.pretrained_config["weights"] == {"selected": "best test epoch", "epoch": best_epoch}
    with torch.no_grad():
        assert torch.equal(model(data[1]), reference_logits(copy / "best_model.pt", data))
    assert "These weights are the best test epoch's" in (folder / "README.md").read_text()


def test_push_to_hub_uploads_the_folder(run, monkeypatch):
    from huggingface_hub import HfApi

    run_dir, summary = run
    calls = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.setdefault("repo", (repo_id, kw)))
    monkeypatch.setattr(HfApi, "create_commit",
                        lambda self, repo_id, operations, **kw: calls.setdefault("commit", (repo_id, operations, kw)))
    push_to_hub(run_dir, "someone/snn", private=True)
    assert calls["repo"] == ("someone/snn", {"private": True, "exist_ok": True, "repo_type": "model"})
    repo_id, operations, options = calls["commit"]
    assert repo_id == "someone/snn" and options["repo_type"] == "model"
    uploaded = {op.path_in_repo: op.path_or_fileobj for op in operations}
    assert sorted(uploaded) == ["README.md", "config.json", "model.safetensors"]
    folder = run_dir / "pretrained"
    assert uploaded["model.safetensors"] == str(folder / "model.safetensors")
    assert json.loads(open(uploaded["config.json"]).read())["results"]["seed"] == summary["seed"]
    card = uploaded["README.md"].decode()
    assert 'from_pretrained("someone/snn")' in card


def test_a_folder_of_another_library_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "resnet50"}))
    with pytest.raises(ValueError, match="not an snn-repro model"):
        from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        pretrained_file(tmp_path, "model.safetensors")


class Payload:
    """A pickled object that a full unpickler would rebuild (and could run code for)."""


def test_checkpoints_are_read_as_tensors_and_containers_only(tmp_path):
    from repro.checkpoint import CorruptCheckpointError

    torch.save({"model": {}, "epoch": 1, "extra": Payload()}, tmp_path / "checkpoint.pt")
    with pytest.raises(CorruptCheckpointError, match="objects other than tensors"):
        load_checkpoint(tmp_path / "checkpoint.pt")
