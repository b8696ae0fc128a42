"""The docs point at things that exist: every relative link names a file, every ``python -m casm``,
``python train.py`` / ``evaluate.py`` and ``make`` line names a real subcommand, script, target and
config file, and every dotted ``key=value`` on such a line is a key of the schema it configures."""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from casm.cli import COMMANDS
from casm.config import Config, EvalConfig, StudyConfig

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
COMMAND = re.compile(r"(?:python|\.venv/bin/python) (?:-m casm|train\.py|evaluate\.py|(?:benchmarks|examples)/\w+\.py)"
                     r"[^`\n|]*|make [a-z]+")
KEY = re.compile(r"^'?([a-z_]+(?:\.[a-z_0-9]+)+)=")  # dotted keys only: plain words may be shell variables
PLACEHOLDER = re.compile(r"[A-Z]{2,}|<|\.\.\.|…")  # FILE, RUN, <set>, ...: not a literal path


def _keys(schema) -> set[str]:
    def walk(node, prefix=""):
        for key in node:
            value = node[key] if not OmegaConf.is_missing(node, key) else None
            declared = node._get_node(key)._metadata.ref_type  # an optional section (model.classifier) is null
            if value is None and dataclasses.is_dataclass(declared):
                value = OmegaConf.structured(declared)
            yield f"{prefix}{key}"
            if OmegaConf.is_dict(value):
                yield from walk(value, f"{prefix}{key}.")
    return set(walk(OmegaConf.structured(schema)))


SCHEMAS = {"train": _keys(Config), "evaluate": _keys(EvalConfig), "study": _keys(StudyConfig)}
MAKE_TARGETS = set(re.findall(r"^([a-z]+):", (ROOT / "Makefile").read_text(), re.M))


def _page_lines(page: Path):
    for number, line in enumerate(page.read_text().splitlines(), 1):
        yield number, line


def _code(page: Path):
    """(line number, code) for each fenced block line and inline code span, leaving out a command the
    page shows failing on purpose (its next line is the ``error:`` it prints)."""
    lines = page.read_text().splitlines()
    fenced = False
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            fenced = not fenced
            continue
        following = lines[number] if number < len(lines) else ""
        if following.startswith("error:"):
            continue
        if fenced:
            yield number, line
        else:
            for span in re.findall(r"`([^`]+)`", line):
                yield number, span


def _anchors(page: Path) -> set[str]:
    """The fragment each heading of a Markdown page gets (GitHub's rule: lower case, punctuation other than
    ``-`` and ``_`` dropped, spaces to ``-``)."""
    fenced, anchors = False, set()
    for line in page.read_text().splitlines():
        fenced = fenced != line.startswith("```")
        heading = re.match(r"#+ (.*)", line)
        if heading and not fenced:
            anchors.add(re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_names_a_file_and_heading(page):
    for number, line in _page_lines(page):
        for target in LINK.findall(line):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            assert path.exists(), f"{page.name}:{number}: link to {target} names no file"
            if anchor and path.suffix == ".md":
                assert anchor in _anchors(path), f"{page.name}:{number}: {path.name} has no heading #{anchor}"


def test_the_anchor_rule_matches_headings_with_code_and_punctuation(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Title\n## ImageNet (`data.name=imagenet`, `configs/imagenet.yaml`)\n```\n# not a heading\n```\n")
    assert _anchors(page) == {"title", "imagenet-datanameimagenet-configsimagenetyaml"}


def _check_command(text: str, where: str) -> None:
    if text.startswith("make "):
        assert text.split()[1] in MAKE_TARGETS, f"{where}: no make target {text.split()[1]}"
        return
    try:
        words = shlex.split(text.replace("\\", " "))
    except ValueError:
        words = text.split()
    words = words[1:]
    if words[:2] == ["-m", "casm"]:
        words = words[2:]
        if not words:
            return
        named = words[0].strip("{}").split(",")  # {train,evaluate,...}: each of them
        assert all(n in COMMANDS for n in named), f"{where}: python -m casm {words[0]}: no such subcommand"
        command, words = words[0], words[1:]
    else:
        assert (ROOT / words[0]).is_file(), f"{where}: no script {words[0]}"
        command, words = Path(words[0]).stem, words[1:]
    if command == "experiment" and words:
        command = "study" if words[0] == "study" else "train"
    schema = SCHEMAS.get(command, SCHEMAS["train"] if command == "split" else None)  # sanity, export: flags only
    for i, word in enumerate(words):
        if word == "--config" and i + 1 < len(words) and words[i + 1].startswith("configs/") \
                and not PLACEHOLDER.search(words[i + 1]):  # (other names are the reader's own files)
            assert (ROOT / words[i + 1]).is_file(), f"{where}: --config {words[i + 1]} names no file"
        match = KEY.match(word)
        if match and schema is not None:
            key = match.group(1)
            assert key in schema or key.startswith("submitit."), f"{where}: {word}: {key} is no key of the " \
                                                                  f"{command} config"  # (submitit: an open mapping)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_line_names_what_exists(page):
    checked = 0
    for number, line in _code(page):
        for text in COMMAND.findall(line):
            _check_command(text.strip(), f"{page.name}:{number}")
            checked += 1
    assert checked > 0, f"{page.name} shows no command"


@pytest.mark.parametrize("line, message", [
    ("python -m casm trian", "no such subcommand"),
    ("python train.py casm.tinning=F", "casm.tinning is no key of the train config"),
    ("python evaluate.py --checkpoint C casm.thinning=F", "casm.thinning is no key of the evaluate config"),
    ("python -m casm experiment study --config configs/studies/nothing.yaml", "names no file"),
    ("python -m casm experiment study --config configs/studies/digits.yaml evaluation.judgee=false",
     "evaluation.judgee is no key of the study config"),
    ("make trian", "no make target trian"),
    ("python benchmarks/train_stepp.py", "no script benchmarks/train_stepp.py"),
])
def test_the_checker_catches(line, message):
    with pytest.raises(AssertionError, match=message):
        _check_command(line, "here")


def test_the_checker_passes_real_lines():
    for line in ("python -m casm experiment study --config configs/studies/digits.yaml seeds=[0,1] "
                 "evaluation.judge=false", "python train.py data.root=/x casm.thinning=F", "make test"):
        _check_command(line, "here")
