"""The docs run as written: README.md and docs/*.md.

- Every ```python block runs in a fresh interpreter whose working directory is a temporary one (so a
  snippet cannot touch the checkout), unless the line before it is `<!-- no-run: reason -->` (keep those
  rare). A python block followed by `<!-- output -->` and a ``` block must print exactly that block.
- README.md has at most 300 lines and the test command that CI reads (see .ci/run).
- Relative links and their #anchors point at files and headings that exist.
- The cheap commands (every script's --help, a usage error, the estimator lab) run in a temporary copy of
  the tracked files: they succeed and modify no tracked file; whatever they write lands in an out*/ dir.
Nothing here depends on the thread count: the printed outputs compared are exact small-number arithmetic.
"""

import filecmp
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md"))
MAX_README_LINES = 250
SNIPPET_TIMEOUT_S = 300  # a snippet with backend="ext" may JIT-build the extension first (about 30 s on 2 cores)

# Words that mean something only to the people who wrote the project (how its work was organised), never to a
# reader: tracked text speaks of the project itself.
IN_HOUSE = re.compile(
    r"\bissue \d+|\bsessions?\b|\bthe lead\b|\bwt-[a-z]+|\b(?:another|the) helper'?s?\b|\bhelper agents?\b|\bCEO\b"
    r"|\b(?:time|\d+ s) budget\b",
    re.I,
)


# -----------------------------------------------------------------------------
# Parsing the markdown


def read(rel):
    with open(os.path.join(ROOT, rel)) as f:
        return f.read()


def code_blocks(rel):
    """Fenced blocks of a markdown file: dicts with lang, text, line (1-indexed, of the opening fence), marker
    (the nearest non-blank line before the fence, stripped)."""
    blocks, lines = [], read(rel).splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        assert j < len(lines), f"{rel}:{i + 1}: code block never closed"
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = lines[k].strip() if k >= 0 else ""
        blocks.append(dict(lang=m.group(1), text="\n".join(lines[i + 1 : j]) + "\n", line=i + 1, marker=marker))
        i = j + 1
    return blocks


def python_blocks():
    """(id, file, block, expected output or None) for every ```python block of the docs."""
    out = []
    for rel in DOCS:
        blocks = code_blocks(rel)
        for n, b in enumerate(blocks):
            if b["lang"] != "python":
                continue
            expected = None
            for later in blocks[n + 1 :]:  # the next <!-- output --> block, before any other python block
                if later["lang"] == "python":
                    break
                if later["marker"] == "<!-- output -->":
                    expected = later["text"]
                    break
            out.append(pytest.param(rel, b, expected, id=f"{rel}:{b['line']}"))
    return out


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped (except - and _), spaces to -."""
    text = re.sub(r"`", "", heading.strip().lstrip("#").strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


# -----------------------------------------------------------------------------
# The python blocks run, and print what the docs say they print


@pytest.mark.parametrize("rel, block, expected", python_blocks())
def test_python_block_runs(rel, block, expected, tmp_path):
    if block["marker"].startswith("<!-- no-run"):
        pytest.skip(f"{rel}:{block['line']}: {block['marker']}")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-c", block["text"]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=SNIPPET_TIMEOUT_S
    )
    assert proc.returncode == 0, f"{rel}:{block['line']}: the python block failed:\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip(), f"{rel}:{block['line']}: a doc snippet should show the reader something"
    if expected is not None:
        got = [line.rstrip() for line in proc.stdout.strip().splitlines()]
        assert got == [line.rstrip() for line in expected.strip().splitlines()], f"{rel}:{block['line']}: output differs"
    assert "tensor(" not in proc.stdout, f"{rel}:{block['line']}: print numbers (.item(), float), not tensors"


def test_doc_blocks_found():
    """The parser sees the README's snippet and its output (a parser that finds nothing would pass vacuously)."""
    params = [p.values for p in python_blocks()]
    readme = [(b, e) for rel, b, e in params if rel == "README.md"]
    assert readme and any(e is not None for _, e in readme)


# -----------------------------------------------------------------------------
# README: its length, the CI test command, links


def test_readme_length():
    n = len(read("README.md").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; at most {MAX_README_LINES}: move the depth into docs/"


def test_readme_test_command():
    """The block after <!-- test-command --> is what .ci/run extracts and runs: one command that runs pytest."""
    blocks = [b for b in code_blocks("README.md") if b["marker"] == "<!-- test-command -->"]
    assert len(blocks) == 1, "README.md needs exactly one ``` block right after <!-- test-command -->"
    cmd = blocks[0]["text"].strip()
    assert "\n" not in cmd and "python -m pytest" in cmd, cmd


@pytest.mark.parametrize("rel", DOCS)
def test_links(rel):
    text = read(rel)
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # links inside code blocks are not links
    base = os.path.dirname(os.path.join(ROOT, rel))
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(base, path)) if path else os.path.join(ROOT, rel)
        key = os.path.relpath(full, ROOT)
        assert os.path.exists(full), f"{rel}: link to a missing file: {target}"
        if anchor:
            headings = [line for line in read(key).splitlines() if line.startswith("#")]
            assert anchor in {slug(h) for h in headings}, f"{rel}: no heading for the anchor in {target}"


def test_docs_start_with_what_a_reader_gets():
    for rel in DOCS[1:]:
        lines = [line for line in read(rel).splitlines() if line.strip()]
        assert lines[0].startswith("# "), f"{rel}: starts with a title"
        assert lines[1].startswith("What you get from this page"), f"{rel}: the first paragraph says what a reader gets"


# -----------------------------------------------------------------------------
# Cheap commands run in a copy of the checkout, and touch no tracked file


def scripts():
    """Every top-level script with a __main__ block."""
    return sorted(f for f in os.listdir(ROOT) if f.endswith(".py") and f != "setup.py" and "__main__" in read(f))


def cheap_commands():
    cmds = [f"python {s} --help" for s in scripts()]
    cmds += [f"python {s} --no_such_key=1" for s in scripts()]
    cmds += ["python bias_variance.py", "python bias_variance.py --json"]
    return [pytest.param(cmd, id=cmd) for cmd in cmds]


@pytest.fixture(scope="module")
def tracked():
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [f for f in out.split("\0") if f and os.path.isfile(os.path.join(ROOT, f))]


def test_no_in_house_words(tracked):
    """Tracked text speaks of the project only, never of how the work on it was organised (see IN_HOUSE)."""
    hits = []
    for f in tracked:
        if f.endswith((".png", ".pt", ".so")):
            continue
        try:
            text = read(f)
        except UnicodeDecodeError:
            continue
        hits += [f"{f}:{i}: {m.group(0)!r}" for i, line in enumerate(text.splitlines(), 1) for m in IN_HOUSE.finditer(line)]
    assert not hits, "in-house words in tracked files:\n" + "\n".join(hits)


def test_lab_commands_are_in_the_docs():
    """The commands run below are the ones the docs show (so the test and the docs cannot drift apart)."""
    shown = "".join(b["text"] for rel in DOCS for b in code_blocks(rel))
    for cmd in ("python bias_variance.py", "python bias_variance.py --json", "python train_tiny.py --help"):
        assert re.search(re.escape(cmd) + r"(\s|$)", shown), cmd


@pytest.mark.parametrize("cmd", cheap_commands())
def test_cheap_command(cmd, tracked, tmp_path):
    copy = tmp_path / "repo"
    for f in tracked:
        os.makedirs(copy / os.path.dirname(f), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, f), copy / f)
    before = {f: os.stat(copy / f).st_mtime_ns for f in tracked}
    env = {**os.environ, "MPLBACKEND": "Agg"}
    argv = [sys.executable] + cmd.split()[1:]
    proc = subprocess.run(argv, cwd=copy, env=env, capture_output=True, text=True, timeout=120)
    if "--no_such_key" in cmd:  # a usage error: status 2 and a message, not a traceback
        assert proc.returncode == 2, f"{cmd}: exit status {proc.returncode}, expected 2\n{proc.stderr[-2000:]}"
        assert "Traceback" not in proc.stderr and proc.stderr.strip(), proc.stderr[-2000:]
    else:
        assert proc.returncode == 0, f"{cmd}: exit status {proc.returncode}\n{proc.stderr[-2000:]}"
        assert proc.stdout.strip(), f"{cmd}: printed nothing"
    # rewritten with the same bytes (a deterministic plot) still counts: copy2 kept the mtimes
    changed = [
        f for f in tracked if before[f] != os.stat(copy / f).st_mtime_ns or not filecmp.cmp(os.path.join(ROOT, f), copy / f, shallow=False)
    ]
    assert not changed, f"{cmd} wrote tracked files: {changed}"
    new = [
        os.path.relpath(os.path.join(d, name), copy)
        for d, _, names in os.walk(copy)
        for name in names
        if os.path.relpath(os.path.join(d, name), copy) not in tracked
    ]
    stray = [f for f in new if not re.match(r"^out[^/]*/", f) and "__pycache__" not in f]
    assert not stray, f"{cmd} wrote outside an out*/ directory: {stray}"
