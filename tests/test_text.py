"""The text modality: hub datasets read from their published files, the embedded stand-in and its
tokenizer, the spiking text Transformer (shapes, padding, diagnostics, energy) and a short training run.
The recipes' ``--smoke`` runs through ``accelerate launch`` are in test_recipes.py (every recipe)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from repro.datasets import CorruptFileError, DatasetNotFoundError, create_dataset
from repro.datasets.text import PAD_ID, hf_datasets, hub_tokenizer
from repro.datasets.text_embedded import NUM_TEST, NUM_TRAIN, generate
from repro.models import call_model_built_hooks, create_model, spiking_layers
from repro.models.spikformer_text import PAD_ID as MODEL_PAD_ID

TINY = dict(depth=1, dim=32, heads=2)


def calibrate_bn(model, ids):
    """One training-mode forward that sets every BN's running statistics to this batch's (a model at its
    initialisation, with running variance ~1 against Linear outputs of std ~0.1, would not spike in eval)."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: after one batch, exactly its statistics
    with torch.no_grad():
        model.train()(ids)


@pytest.fixture(scope="module")
def embedded():
    return create_dataset("sentiment_embedded", "train"), create_dataset("sentiment_embedded", "test")


def write_published(root, repo: str, files: dict, rows: dict) -> None:
    """Files in the hub repository's own format: JSON lines (one object per line) or parquet."""
    import pyarrow
    import pyarrow.parquet

    (root / repo).mkdir(parents=True)
    for split, name in files.items():
        columns = rows[split]
        if name.endswith(".jsonl"):
            lines = [json.dumps(dict(zip(columns, values))) for values in zip(*columns.values())]
            (root / repo / name).write_text("\n".join(lines) + "\n")
        else:
            pyarrow.parquet.write_table(pyarrow.table(columns), root / repo / name)


def test_hub_datasets_read_the_published_files(tmp_path, monkeypatch):
    hf = hf_datasets()
    monkeypatch.setattr(hf.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    rows = {"train": {"text": ["a fine film", "a dull film", "fine and moving"], "label": [1, 0, 1],
                      "label_text": ["positive", "negative", "positive"]},
            "test": {"text": ["dull , dull", "moving"], "label": [0, 1], "label_text": ["negative", "positive"]}}
    write_published(tmp_path, "SetFit/sst2", {"train": "train.jsonl", "test": "test.jsonl"}, rows)
    write_published(tmp_path, "cornell-movie-review-data/rotten_tomatoes",
                    {"train": "train.parquet", "test": "test.parquet"}, rows)
    for name in ("sst2", "mr"):
        test = create_dataset(name, "test", root=str(tmp_path), tokenizer="trained", max_length=8)
        assert any((tmp_path / "hf_cache").glob("*/*/*/*/*.arrow"))  # read by datasets, cached as Arrow
        assert test.modality == "text" and test.num_classes == 2 and test.targets.tolist() == [0, 1]
        assert test.in_channels == 4 + 6  # [PAD] [UNK] [CLS] [SEP] + the 6 distinct training words
        tokens = [[test.tokenizer.id_to_token(i) for i in ids] for ids in test.tokens.tolist()]
        assert tokens == [["[CLS]", "dull", "[UNK]", "dull", "[SEP]"] + ["[PAD]"] * 3,  # "," is no training word
                          ["[CLS]", "moving", "[SEP]"] + ["[PAD]"] * 5]
    with pytest.raises(DatasetNotFoundError, match=r"--download.*"):
        create_dataset("subj", "train", root=str(tmp_path))
    (tmp_path / "SetFit/sst2/test.jsonl").write_text('{"text": "x", "label": -1}\n')
    with pytest.raises(ValueError, match="outside 0..1"):
        create_dataset("sst2", "test", root=str(tmp_path), tokenizer="trained")
    (tmp_path / "SetFit/sst2/test.jsonl").write_text('{"text": "x", "lab')
    with pytest.raises(CorruptFileError, match="test.jsonl"):
        create_dataset("sst2", "test", root=str(tmp_path), tokenizer="trained")


def test_hugging_face_datasets_is_found_past_our_own_datasets_folder(tmp_path):
    """From the checkout's root ``import datasets`` finds our folder; ``hf_datasets`` finds Hugging Face's, and
    ``unshadow_hf_datasets`` (the engine calls it before accelerate's ``prepare``, which probes for it) imports
    that one, there and only there."""
    root = Path(__file__).resolve().parents[1]
    def python(code: str, cwd: Path) -> str:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd)
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    plain = subprocess.run([sys.executable, "-c", "import datasets"], capture_output=True, text=True, cwd=root)
    assert plain.returncode != 0 and "relative import beyond top-level package" in plain.stderr
    assert python("from repro.datasets.text import hf_datasets; hf = hf_datasets(); import datasets; "
                  "print(hf is datasets, datasets.load_dataset.__module__)", root) == ["True", "datasets.load"]
    unshadow = ("import sys; from repro.datasets.text import unshadow_hf_datasets; unshadow_hf_datasets(); "
                "print('datasets' in sys.modules); import datasets; print(datasets.load_dataset.__module__)")
    assert python(unshadow, root) == ["True", "datasets.load"]
    assert python(unshadow, tmp_path) == ["False", "datasets.load"]  # not shadowed: nothing imported early


def test_hub_tokenizer_comes_from_the_cache_and_is_never_fetched_without_download(tmp_path, monkeypatch):
    """A tokenizer.json in the Hugging Face cache layout (models--ORG--NAME/snapshots/REV, refs/main) is read
    offline; a name not in the cache is an error saying how to get it."""
    import huggingface_hub.constants

    from repro.datasets.text import train_word_level

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    snapshot = tmp_path / "models--org--bert-like" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (tmp_path / "models--org--bert-like" / "refs").mkdir()
    (tmp_path / "models--org--bert-like" / "refs" / "main").write_text("0123abcd")
    train_word_level(["a fine film", "a dull film"]).save(str(snapshot / "tokenizer.json"))
    tokenizer = hub_tokenizer("org/bert-like")
    assert tokenizer.encode("a fine day").tokens == ["[CLS]", "a", "fine", "[UNK]", "[SEP]"]
    with pytest.raises(FileNotFoundError, match="--download.*--dataset.tokenizer trained"):
        hub_tokenizer("org/no-such-tokenizer")


def test_embedded_text_needs_word_order(embedded):
    """Fixed disjoint split; a unigram bag of words is at chance, word n-grams are not (logistic regression)."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    train, test = embedded
    assert (len(train), len(test)) == (NUM_TRAIN, NUM_TEST) and not set(train.texts) & set(test.texts)
    assert 0.45 < train.targets.float().mean() < 0.55 and train.in_channels == 46
    texts, labels = generate(NUM_TRAIN + NUM_TEST)
    assert texts == train.texts + test.texts and labels == train.targets.tolist() + test.targets.tolist()
    accuracy = {}
    for n in (1, 3):
        counts = CountVectorizer(ngram_range=(1, n), token_pattern=r"\S+").fit(train.texts)
        classifier = LogisticRegression(C=10, solver="liblinear").fit(counts.transform(train.texts), train.targets)
        accuracy[n] = classifier.score(counts.transform(test.texts), test.targets)
    assert accuracy[1] < 0.6 < 0.85 < accuracy[3], accuracy  # measured: 0.518 and 0.902


def test_tokenizer_round_trip(embedded):
    train, test = embedded
    assert train.tokenizer.get_vocab() == test.tokenizer.get_vocab()  # trained on the same split: same ids
    for text, ids in zip(test.texts, test.tokens):
        length = int((ids != PAD_ID).sum())
        cls, sep = train.tokenizer.token_to_id("[CLS]"), train.tokenizer.token_to_id("[SEP]")
        assert ids[0] == cls and ids[length - 1] == sep
        assert train.tokenizer.decode(ids.tolist()) == text
    assert train.tokenizer.encode("the movie is superb").tokens[:7] == ["[CLS]", "the", "movie", "is", "[UNK]", "[SEP]",
                                                                        "[PAD]"]


@pytest.mark.parametrize("neuron, options", [
    ("lif", {"neuron_kwargs": {"decay": 0.5}}), ("circulate_firing", {"attn_threshold_option": "theta"})],
    ids=["lif", "circulate_firing"])
def test_output_shapes_and_padding_invariance(embedded, neuron, options):
    """Logits [T, B, K]; the same sentences padded to 64 or to their longest length give the same logits
    bitwise, in training mode (BN batch statistics over real tokens only) and in eval mode, and in eval
    mode a sentence's logits do not depend on its batch mates."""
    assert MODEL_PAD_ID == PAD_ID
    train, _ = embedded
    torch.manual_seed(0)
    model = create_model("spikformer_text", in_channels=train.in_channels, num_classes=2, num_steps=4,
                         neuron=neuron, surrogate="learnable" if neuron == "circulate_firing" else "atan",
                         **TINY, **options)
    ids = train.tokens[:6]
    longest = int((ids != PAD_ID).sum(1).max())
    calibrate_bn(model, ids)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        logits = model(ids)
        assert logits.shape == (4, 6, 2) and logits.std() > 0
        assert torch.equal(logits, model(ids[:, :longest]))
    assert torch.allclose(model(ids[2:3]), logits[:, 2:3], atol=1e-6)
    with pytest.raises(ValueError, match="token ids"):
        model(ids.float())


@pytest.mark.parametrize("neuron, surrogate, loss", [
    ("plif", "triangle", "tet"), ("adaptive_threshold", "tgo", "ce"), ("plif", "mpd_agl", "ls_ce"),
    ("lif", "a2sg", "pnb")])
def test_any_neuron_surrogate_and_loss_train_it(embedded, neuron, surrogate, loss):
    """One training step of each method's neuron / surrogate / loss: finite loss, a gradient down to the
    embedding rows of the batch's tokens and none on the padding row."""
    from repro.losses import create_loss

    train, _ = embedded
    model = call_model_built_hooks(create_model("spikformer_text", in_channels=train.in_channels, num_steps=4,
                                                neuron=neuron, surrogate=surrogate, **TINY))
    loss_fn = create_loss(loss)
    if hasattr(loss_fn, "bind"):
        loss_fn.bind(model)
    value = loss_fn(model(train.tokens[:8]), train.targets[:8])
    value.backward()
    used = train.tokens[:8].unique()
    grad = model.embedding.weight.grad
    assert torch.isfinite(value) and grad[used[used != PAD_ID]].abs().sum(1).gt(0).all() and not grad[PAD_ID].any()


def test_firing_rates_and_energy_count_real_tokens_only(embedded):
    """Every neuron sees the M real tokens only (T * M * D outputs, the mean |S| as the rate); the token
    encoder, fed by the real-valued embedding, is the energy meter's MAC layer with M D^2 MACs per step."""
    from repro.diagnostics import FiringRateMonitor, collect_diagnostics

    train, _ = embedded
    model = create_model("spikformer_text", in_channels=train.in_channels, num_steps=4, neuron_kwargs={"decay": 0.5},
                         **TINY)
    ids, targets = train.tokens[:8], train.targets[:8]
    calibrate_bn(model, ids)
    model.eval()
    real = int((ids != PAD_ID).sum())
    spikes = {}
    hooks = [module.register_forward_hook(lambda module, inputs, out, name=name: spikes.setdefault(name, out))
             for name, module in spiking_layers(model)]
    with FiringRateMonitor(model) as monitor, torch.no_grad():
        model(ids)
    for hook in hooks:
        hook.remove()
    _, counts = monitor.totals()
    width = {n: s.shape[-1] for n, s in spikes.items()}
    assert counts.tolist() == [4 * real * width[n] for n, _ in spiking_layers(model)]
    assert 0 < monitor.rates()["encoder.neuron"] < 1
    assert monitor.rates() == pytest.approx({n: s.abs().mean().item() for n, s in spikes.items()})

    result = collect_diagnostics(model, [(ids, targets)], measures=("firing_rate", "energy"))
    layers = {row["name"]: row for row in result["energy"]["layers"]}
    encoder = layers["encoder.linear_bn.layers.0"]
    assert (encoder["role"], encoder["input"]) == ("MAC", "real")
    assert encoder["flops_per_step"] == real * 32 * 32 / 8
    assert layers["blocks.0.attention.q.linear_bn.layers.0"]["input"] == "binary"


def test_short_training_run_learns_the_embedded_text(embedded):
    """Circulate-firing neurons with the learnable surrogate on a tiny text Spikformer (T = 2, one block of
    width 32), AdamW lr 3e-3, 8 epochs: measured 96.2-100 % test accuracy over seeds 0-4 (chance 50 %, a bag of
    words 51.8 %).  With lr 1e-2 and 4 epochs two of those five seeds stayed at chance, so that budget is not
    used here."""
    import torch.nn.functional as F

    train, test = embedded
    torch.manual_seed(0)
    model = create_model("spikformer_text", in_channels=train.in_channels, num_steps=2, neuron="circulate_firing",
                         neuron_kwargs={"reset_detach": True}, surrogate="learnable", attn_threshold_option="theta",
                         **TINY)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: a second thread only waits, and on a shared CPU it spins
    try:
        for _ in range(8):
            model.train()
            for batch in torch.randperm(len(train)).split(64):
                loss = F.cross_entropy(model(train.tokens[batch]).mean(0), train.targets[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            accuracy = (model.eval()(test.tokens).mean(0).argmax(-1) == test.targets).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    assert accuracy > 0.85, accuracy
