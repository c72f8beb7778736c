"""Checks that `pip install .` gives a ctpo usable from any directory: runs the README's loss example (the first
```python block under "## Using the loss") with the given Python, in an empty temporary directory outside the
checkout, and compares what it prints with the README's <!-- output --> block. Any warning on stderr fails it.

    python tools/check_install.py VENV_PYTHON     # e.g. build/venv-pkg/bin/python after `pip install .` there

CI runs it in a fresh venv (.ci/run). Exit status 0 when the output matches and stderr is empty.
"""

import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_example():
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("## Using the loss", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    expected = re.search(r"<!-- output -->\n```\n(.*?)```", section, re.S).group(1)
    return code, expected


def main(python):
    python = os.path.abspath(python) if os.sep in python else python  # the example runs in another directory
    code, expected = readme_example()
    with tempfile.TemporaryDirectory() as d:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        r = subprocess.run([python, "-c", code], cwd=d, capture_output=True, text=True, env=env, timeout=300)
        where = subprocess.run([python, "-c", "import ctpo; print(ctpo.__file__)"], cwd=d, capture_output=True, text=True, env=env)
        where = where.stdout.strip()
    ok = r.returncode == 0 and r.stdout == expected and r.stderr == ""
    print(f"check_install: ctpo from {where}: {'ok' if ok else 'FAILED'}")
    if not ok:
        print(f"exit status {r.returncode}\n--- stdout\n{r.stdout}--- expected\n{expected}--- stderr\n{r.stderr}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tools/check_install.py VENV_PYTHON")
    sys.exit(main(sys.argv[1]))
