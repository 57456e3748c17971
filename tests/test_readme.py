"""README and docs/ commands stay true: every `python -m` / `torchrun -m` / `slurm/launch.sh` line names a real entry
point, and every `--flag` it uses is one that entry point accepts (the commands themselves run in the CLI tests and
the demo); user docs name no file outside the repository."""

import os
import re
import shlex
import subprocess

import pytest

from helpers import PYTHON, REPO, child_env

README = open(os.path.join(REPO, "README.md")).read()
DOCS = {
    name: open(os.path.join(REPO, "docs", name)).read()
    for name in sorted(os.listdir(os.path.join(REPO, "docs")))
    if name.endswith(".md")
}
BLOCKS = [b for text in [README, *DOCS.values()] for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def _lines(block):
    # A trailing backslash continues the command on the next line, as in the shell.
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


LINES = [line for block in BLOCKS for line in _lines(block)]


def _entry(line):
    words = shlex.split(line.split("#")[0])
    words = [w for w in words if "=" not in w or w.startswith("-")]  # drop VAR=value prefixes and key=value overrides
    if "-m" in words and words[0] in ("python", "torchrun"):
        return ("module", words[words.index("-m") + 1], words)
    if words and words[0] == "slurm/launch.sh":
        return ("launch", words[1], words)
    return None


ENTRIES = [e for e in map(_entry, LINES) if e]


def test_readme_has_the_two_commands_and_they_exist():
    assert "make demo" in README and "make test" in README
    makefile = open(os.path.join(REPO, "Makefile")).read()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    ci = open(os.path.join(REPO, ".ci", "run")).read()
    assert "make test" in ci
    assert len(ENTRIES) >= 8


def test_readme_is_short_and_status_first():
    lines = README.splitlines()
    assert len(lines) <= 220, len(lines)
    headings = [line for line in lines if line.startswith("## ")]
    assert headings[0] == "## Status"
    assert "Nothing has been trained on real CPJUMP1 images" in README
    for name in DOCS:
        assert f"docs/{name}" in README, f"README does not link docs/{name}"


@pytest.mark.parametrize("name", ["README.md", *[f"docs/{n}" for n in DOCS]])
def test_user_docs_name_no_file_outside_the_repository(name):
    text = README if name == "README.md" else DOCS[name[5:]]
    assert "../shared" not in text and "REAL-BENCHMARKS" not in text, name


@pytest.mark.parametrize("kind,name,words", ENTRIES, ids=[" ".join(e[2][:4]) for e in ENTRIES])
def test_readme_command_flags_exist(kind, name, words):
    if kind == "module":
        cmd = [PYTHON, "-m", name, "--help"]
    else:
        cmd = ["bash", os.path.join(REPO, "slurm", "launch.sh"), "--help"]
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    start = words.index(name) + 1  # flags after the entry point (torchrun's own come before it)
    flags = [w.split("=")[0] for w in words[start:] if w.startswith("--")]
    missing = [f for f in flags if f not in proc.stdout]
    assert not missing, f"{' '.join(words)}: {missing} not in the --help of {name}"
    for path in [w for w in words if w.startswith("configs/")]:
        assert os.path.isfile(os.path.join(REPO, path)), path


def test_readme_uses_the_current_cli_vocabulary():
    # Old spellings still parse (hidden aliases for one release) but the README teaches only the shared vocabulary.
    for kind, name, words in ENTRIES:
        line = " ".join(words)
        assert "--root" not in words and "--workers" not in words, line
        if "--out" in words:
            out = words[words.index("--out") + 1]
            assert not out.endswith((".parquet", ".csv")), f"{line}: --out is a folder"
        if "--plates" in words:
            value = words[words.index("--plates") + 1]
            following = words[words.index("--plates") + 2 : words.index("--plates") + 3]
            assert not (following and not following[0].startswith("-")), f"{line}: --plates takes A,B,..."
            assert value and not value.startswith("-"), line
