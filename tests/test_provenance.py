"""Citations a reader can follow: no source file cites a spec file that is not in the repository, and every
``docs/<name>.md section "<heading>"`` citation names a heading that exists.  Text only, no model runs; plus the two
PLIF forms that ``models/neurons.py::plif`` names, against plain-PyTorch loops."""
import re
from pathlib import Path

import pytest
import torch

from repro.models import create_neuron

ROOT = Path(__file__).parents[1]
SOURCE_DIRS = ("repro", "models", "surrogates", "datasets", "recipes", "benchmarks")
# the method specs live outside the repository; a docstring citing them cannot be followed
SPEC_FILE = re.compile(r"\b(common|ds_atgo|mpd_agl|circulate_firing|ecosystem|gpu|a2sg)\.md\b")
ALLOWED_SPEC_CITATIONS: set[str] = set()  # "path" entries exempt from the check; keep empty
CITATION = re.compile(r'docs/([\w-]+)\.md,?\s+sections?\s+((?:"[^"]+"(?:,\s+and\s+|,\s*|\s+and\s+)?)+)')


def python_files(dirs=SOURCE_DIRS):
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py"))


def citations(text: str) -> list[tuple[str, str]]:
    """(doc name, section name) of every citation; comment markers and line breaks inside one are ignored."""
    flat = " ".join(re.sub(r"\n\s*#\s?", " ", text).split())
    return [(doc, name) for doc, names in CITATION.findall(flat) for name in re.findall(r'"([^"]+)"', names)]


def headings(doc: Path) -> set[str]:
    """Heading texts of a Markdown file, each also without a trailing tag or parenthesis ("Energy [reconstructed]",
    "Spikformer (`models/spikformer.py`)" are cited as "Energy", "Spikformer")."""
    found = set()
    for line in doc.read_text().splitlines():
        if match := re.match(r"#{1,6}\s+(.*\S)", line):
            found |= {match[1], re.sub(r"\s*[\[(].*$", "", match[1])}
    return found


def test_no_source_file_cites_a_spec_file():
    offenders = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
                 for path in python_files() if str(path.relative_to(ROOT)) not in ALLOWED_SPEC_CITATIONS
                 for number, line in enumerate(path.read_text().splitlines(), 1) if SPEC_FILE.search(line)]
    assert not offenders, ("cite the paper (and equation) or a docs/methods.md section instead of a spec file:\n"
                           + "\n".join(offenders))


def test_every_cited_docs_section_exists():
    sources = python_files((*SOURCE_DIRS, "tests")) + sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
    cited = {(path.relative_to(ROOT), doc, name) for path in sources for doc, name in citations(path.read_text())}
    assert len({(doc, name) for _, doc, name in cited}) >= 10  # the check sees the citations (not vacuous)
    missing = [f"{path}: docs/{doc}.md section {name!r}" for path, doc, name in sorted(cited)
               if not (ROOT / "docs" / f"{doc}.md").exists() or name not in headings(ROOT / "docs" / f"{doc}.md")]
    assert not missing, "cited sections that do not exist:\n" + "\n".join(missing)


def test_citation_parser_by_hand():
    text = '(docs/methods.md sections "Data", "Losses" and "Backbones"; see\n    # docs/diagnostics.md section\n' \
           '    # "Gradient-window\n occupancy")'
    assert citations(text) == [("methods", "Data"), ("methods", "Losses"), ("methods", "Backbones"),
                               ("diagnostics", "Gradient-window occupancy")]
    assert {"Energy", "Energy [reconstructed]"} <= headings(ROOT / "docs" / "diagnostics.md")


def plif_loop(x, decay, fang):
    """Hard-reset PLIF, fire on u >= 1, reset attached: the reference codes' u = decay u + I (``fang=False``) or
    Fang et al.'s u = (1 - 1/tau) u + I / tau with 1/tau = 1 - decay (``fang=True``)."""
    u, s, out = torch.zeros_like(x[0]), torch.zeros_like(x[0]), []
    for x_t in x:
        u = decay * u * (1 - s) + ((1 - decay) * x_t if fang else x_t)
        s = (u >= 1.0).float()
        out.append(s)
    return torch.stack(out)


@pytest.mark.parametrize("fang", [False, True])
def test_plif_forms_named_in_its_docstring(fang):
    """``plif`` is the reference codes' form; ``plif(decay_input=True)`` is Fang et al.'s; they fire differently."""
    torch.manual_seed(0)
    x = torch.rand(8, 32, 32) * 2.0
    neuron = create_neuron("plif", decay=0.5, surrogate="atan", decay_input=fang)
    spikes = neuron(x).detach()
    assert torch.equal(spikes, plif_loop(x, 0.5, fang))
    assert not torch.equal(spikes, plif_loop(x, 0.5, not fang))
