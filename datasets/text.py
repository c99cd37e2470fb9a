"""Sentence classification: SST-2, SST-5, MR and Subj from the Hugging Face hub, tokenised to fixed-length
token ids.  docs/methods.md, "Circulate-firing recipes" (the SpikeBERT text setup) [reconstructed].

- Files: each dataset is read with Hugging Face ``datasets`` (``load_dataset("json" | "parquet")``, cached
  as Arrow in its own cache) from the files its hub repository publishes, kept under ``root/<repo id>/``
  with the hub's own names (JSON lines for the SetFit sets, parquet for MR).  ``download=True`` fetches
  missing files with ``huggingface_hub``.
- Splits: the hub's ``train`` / ``validation`` / ``test``.  SST-2 is the sentence-level SST binary set
  (6920 / 872 / 1821, labelled test), not GLUE's phrase-level set, whose test labels are hidden
  [reconstructed: which SST-2 split the papers report on is not stated in our sources].
- Tokens: ``tokenizer`` is a hub tokenizer (``bert-base-cased``, the SpikeBERT setup [reference code];
  fetched only with ``download=True``, then read from the Hugging Face cache) or ``"trained"``: a
  word-level vocabulary trained with ``tokenizers`` on the training split (offline).  Every sequence is
  ``[CLS] tokens [SEP]``, truncated and right-padded with ``[PAD]`` (id 0) to ``max_length`` (64).
  The model finds the padding by its id, so no mask travels with the batch.

Items: (long [max_length] token ids, int label).  ``in_channels`` is the vocabulary size: a token is one
of ``in_channels`` symbols, which is what the model's embedding needs.
"""
from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset

from .files import corrupt, not_found

PAD_ID = 0
MAX_LENGTH = 64
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")  # [PAD] first: id 0, as in BERT's vocabularies


def train_word_level(texts: Sequence[str], vocab_size: int = 30000):
    """A word-level tokenizer trained on ``texts`` with ``tokenizers`` (cased BERT normaliser and
    pre-tokeniser, the ``vocab_size`` most frequent words, ``[UNK]`` for the rest, ``[CLS] x [SEP]``).
    Its trainer breaks frequency ties by the word, so every process builds the same ids (its WordPiece
    trainer does not: two runs give different sub-word vocabularies)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=False)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                             special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tokenizer


def hub_tokenizer(name: str, download: bool = False):
    """The ``tokenizer.json`` of hub model ``name`` (e.g. ``bert-base-cased``), from the Hugging Face cache,
    fetched first only if ``download``."""
    from huggingface_hub import hf_hub_download
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(hf_hub_download(name, "tokenizer.json", local_files_only=not download))
    except Exception as error:  # noqa: BLE001 - the hub raises several kinds; all mean "not available"
        raise FileNotFoundError(
            f"tokenizer {name!r} is not available ({type(error).__name__}): pass --download once to fetch it "
            "into the Hugging Face cache, or use --dataset.tokenizer trained (a vocabulary trained on the "
            "training split, offline)") from error


def encode(tokenizer, texts: Sequence[str], max_length: int = MAX_LENGTH) -> torch.Tensor:
    """Token ids [N, max_length] (int64): ``[CLS] x [SEP]``, truncated, right-padded with id 0."""
    if tokenizer.token_to_id("[PAD]") != PAD_ID:
        raise ValueError(f"the tokenizer's [PAD] id is {tokenizer.token_to_id('[PAD]')}, the models expect "
                         f"{PAD_ID}; use a BERT-style vocabulary")
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=PAD_ID, pad_token="[PAD]", length=max_length)
    return torch.tensor([encoding.ids for encoding in tokenizer.encode_batch(list(texts))], dtype=torch.long)


class TokenizedText(Dataset):
    """Sentences as token ids [max_length] with integer labels (in memory)."""

    modality = "text"
    in_memory = True
    pad_id = PAD_ID

    def __init__(self, texts: Sequence[str], labels: Sequence[int], num_classes: int, tokenizer,
                 max_length: int = MAX_LENGTH):
        if max_length < 3:
            raise ValueError(f"max_length must be >= 3 ([CLS], a token, [SEP]), got {max_length}")
        self.texts, self.num_classes, self.tokenizer = list(texts), num_classes, tokenizer
        self.tokens = encode(tokenizer, self.texts, max_length)
        self.targets = torch.as_tensor(list(labels), dtype=torch.long)
        self.in_channels = tokenizer.get_vocab_size()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.tokens[index], int(self.targets[index])


@dataclass(frozen=True)
class HubText:
    """Where a hub dataset's files are and what their columns mean."""

    repo: str
    files: dict
    num_classes: int
    text: str = "text"
    label: str = "label"


HUB_TEXT = {
    "sst2": HubText("SetFit/sst2", {"train": "train.jsonl", "validation": "dev.jsonl", "test": "test.jsonl"}, 2),
    "sst5": HubText("SetFit/sst5", {"train": "train.jsonl", "validation": "dev.jsonl", "test": "test.jsonl"}, 5),
    "mr": HubText("cornell-movie-review-data/rotten_tomatoes",
                  {"train": "train.parquet", "validation": "validation.parquet", "test": "test.parquet"}, 2),
    "subj": HubText("SetFit/subj", {"train": "train.jsonl", "test": "test.jsonl"}, 2),
}


def is_our_folder(folder: Path) -> bool:
    """Whether ``folder`` is a checkout's ``datasets/`` (this package's source), known by ``text_embedded.py``."""
    return (folder / "text_embedded.py").is_file()


def hf_datasets():
    """Hugging Face ``datasets``, imported also where a checkout's own ``datasets/`` folder would shadow it:
    with a checkout's root on ``sys.path`` (``python -m ...`` run from the root), a plain ``import datasets``
    finds our folder.  The search skips every entry holding our folder (``is_our_folder``); the module is
    then imported once, as ``datasets``, as a plain import would."""
    if "datasets" in sys.modules:
        return sys.modules["datasets"]
    search = [p for p in sys.path if not is_our_folder(Path(p or os.getcwd()) / "datasets")]
    spec = importlib.machinery.PathFinder.find_spec("datasets", search)
    if spec is None:
        raise ImportError("the hub's text datasets are read with Hugging Face datasets, which is not installed: "
                          "pip install \"datasets>=2.19\" (in a checkout: pip install -e \".[text]\")")
    module = importlib.util.module_from_spec(spec)
    sys.modules["datasets"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["datasets"]
        raise
    return module


def unshadow_hf_datasets() -> None:
    """Where a plain ``import datasets`` would find a checkout's ``datasets/`` folder and Hugging Face's package
    is installed, import the latter now (``hf_datasets``), so that libraries which probe for it (accelerate's
    ``prepare`` does) get it and not our folder.  Otherwise nothing (the import costs a second or more)."""
    if "datasets" in sys.modules:
        return
    spec = importlib.util.find_spec("datasets")
    if spec is not None and spec.origin and is_our_folder(Path(spec.origin).parent):
        with contextlib.suppress(ImportError):
            hf_datasets()


def read_columns(path: Path, text: str, label: str) -> tuple[list[str], list[int]]:
    """The text and label columns of one published file (JSON lines or parquet, by extension), read with
    ``datasets.load_dataset``."""
    hf = hf_datasets()
    if hf.is_progress_bar_enabled():
        hf.disable_progress_bars()
    builder = "json" if path.suffix == ".jsonl" else "parquet"
    try:
        table = hf.load_dataset(builder, data_files=str(path), split="train")
        return list(table[text]), [int(y) for y in table[label]]
    except (KeyError, ValueError, OSError, hf.exceptions.DatasetsError) as error:
        raise corrupt(path, error, f"it must be the hub's file with columns {text!r} and {label!r}: delete it and "
                                   "fetch it again (--download)") from error


def hub_text_dataset(name: str, split: str, root: str | Path, download: bool, tokenizer: str, max_length: int,
                     vocab_size: int) -> TokenizedText:
    spec = HUB_TEXT[name]
    if split not in spec.files:
        raise ValueError(f"{name} has splits {sorted(spec.files)}, got {split!r}")
    hf_datasets()  # not installed: say so before any download
    directory = Path(root) / spec.repo
    needed = [split] + (["train"] if tokenizer == "trained" and split != "train" else [])
    missing = [directory / spec.files[s] for s in needed if not (directory / spec.files[s]).exists()]
    if missing and download:
        from huggingface_hub import hf_hub_download

        for path in missing:
            hf_hub_download(spec.repo, path.name, repo_type="dataset", local_dir=directory)
    elif missing:
        layout = "\n".join(f"  {directory / f}" for f in spec.files.values())
        raise not_found(name, root, missing, layout, f"pass --download (fetches the files of "
                        f"huggingface.co/datasets/{spec.repo}), or copy them there from the hub")
    texts, labels = read_columns(directory / spec.files[split], spec.text, spec.label)
    bad = sorted({y for y in labels if not 0 <= y < spec.num_classes})
    if bad:
        raise ValueError(f"{directory / spec.files[split]}: labels {bad[:5]} outside 0..{spec.num_classes - 1}; "
                         "this file has no usable labels (e.g. a hidden test split): use the hub's labelled file")
    if tokenizer == "trained":
        text_tokenizer = train_word_level(read_columns(directory / spec.files["train"], spec.text, spec.label)[0],
                                          vocab_size)
    else:
        text_tokenizer = hub_tokenizer(tokenizer, download)
    return TokenizedText(texts, labels, spec.num_classes, text_tokenizer, max_length)


def _hub_factory(name: str):
    def create(split: str = "train", root: str = "data", download: bool = False, tokenizer: str = "bert-base-cased",
               max_length: int = MAX_LENGTH, vocab_size: int = 30000) -> TokenizedText:
        return hub_text_dataset(name, split, root, download, tokenizer, max_length, vocab_size)

    spec = HUB_TEXT[name]
    create.__name__ = name
    create.__doc__ = (f"{name}: huggingface.co/datasets/{spec.repo} ({spec.num_classes} classes), files "
                      f"{sorted(spec.files.values())} under root/{spec.repo}/.  ``tokenizer``: a hub tokenizer "
                      "or 'trained' (the ``vocab_size`` most frequent words of the training split).")
    create.modality = TokenizedText.modality
    return create


HUB_DATASETS = {name: _hub_factory(name) for name in HUB_TEXT}
