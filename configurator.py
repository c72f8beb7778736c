"""
The configuration of train_tiny.py and compare.py, nanoGPT style: the defaults are the commented globals at
the top of the script; a config file (plain Python assignments, e.g. config/long.py) changes some of them;
then --key=value (or --key value) arguments win over both.

    python train_tiny.py config/long.py --method=grpo --lr 3e-4

Values are Python literals of the default's type (--lr=3e-4, --adv_scale=False, --fixed_window="(0.5, 5.0)");
an int passes for a float and a list for a tuple; a string key takes the text as it is (--method=grpo).
Anything else (an unknown key, a wrong type, a key without a value, an unreadable file) is an error: one line
naming the key, and exit status 2.
"""

import ast
import io
import tokenize
import types


class ConfigError(ValueError):
    """A usage error: the scripts print it as one line, '<script>: error: ...', and exit with status 2."""


def split_argv(argv):
    """Config files (arguments ending in .py, not starting with '-') and (key, value text) pairs, in order."""
    files, pairs, i = [], [], 0
    while i < len(argv):
        arg, i = argv[i], i + 1
        if not arg.startswith("-") and arg.endswith(".py"):
            files.append(arg)
        elif arg.startswith("--") and len(arg) > 2:
            key, eq, val = arg[2:].partition("=")
            if not eq:  # --key value
                if i == len(argv) or argv[i].startswith("--"):
                    raise ConfigError(f"--{key}: expected a value (--{key}=VALUE or --{key} VALUE)")
                val, i = argv[i], i + 1
            pairs.append((key, val))
        else:
            raise ConfigError(f"expected --key=value or a config file (config/NAME.py), got {arg!r}; see --help")
    return files, pairs


def typed(key, value, default, where):
    """value with the default's type: ints pass for floats and lists for tuples; anything else is an error."""
    if isinstance(default, float) and type(value) is int:
        value = float(value)
    if isinstance(default, tuple) and isinstance(value, list):
        value = tuple(value)
    if type(value) is not type(default):
        raise ConfigError(
            f"{where}: expected {type(default).__name__} (like the default {default!r}), got {type(value).__name__} {value!r}"
        )
    return value


def from_text(key, text, default):
    """A command-line value: a Python literal, or for a string key any text (--method=grpo, --seeds=1,2)."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text  # a bare string; a wrong type for any other key, which typed() reports
    if isinstance(default, str) and not isinstance(value, str):
        value = text
    return typed(key, value, default, f"--{key}")


def read_file(path, defaults):
    """The assignments of a config file (run in its own namespace, as nanoGPT does): {key: typed value}."""
    try:
        with open(path) as f:
            src = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
    ns = {}
    try:
        exec(compile(src, path, "exec"), ns)
    except Exception as e:  # a syntax or runtime error in the user's file: one line, with the file (and line)
        where = f"{path}:{e.lineno}" if isinstance(e, SyntaxError) else path
        raise ConfigError(f"{where}: {type(e).__name__}: {e}") from None
    out = {}
    for key, value in ns.items():
        if key.startswith("_") or isinstance(value, types.ModuleType):  # __builtins__, `import math`
            continue
        if key not in defaults:
            raise ConfigError(f"{path}: unknown config key {key!r}; valid keys: {', '.join(defaults)}")
        out[key] = typed(key, value, defaults[key], f"{path}: {key}")
    return out


def parse(argv, defaults):
    """The defaults, then each config file in order, then the --key=value arguments: a new dict."""
    files, pairs = split_argv(argv)
    cfg = dict(defaults)
    for path in files:
        cfg.update(read_file(path, defaults))
    for key, text in pairs:
        if key not in defaults:
            raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(defaults)}")
        cfg[key] = from_text(key, text, defaults[key])
    return cfg


def comments(path, keys):
    """The config block of a script, read from its source: [("section", text) | ("key", name, comment)].
    A key's comment is the one on its line, joined with the indented comment lines below it."""
    with open(path) as f:
        toks = list(tokenize.generate_tokens(io.StringIO(f.read()).readline))
    out, last = [], None  # last: the index in out of the key a continued comment belongs to
    for i, tok in enumerate(toks):
        if tok.type == tokenize.NAME and tok.start[1] == 0 and tok.string in keys and toks[i + 1].string == "=":
            comment = next((t.string for t in toks[i:] if t.start[0] == tok.start[0] and t.type == tokenize.COMMENT), "#")
            out.append(("key", tok.string, comment[1:].strip()))
            last = len(out) - 1
        elif tok.type == tokenize.COMMENT and tok.start[1] == 0 and last is not None and tok.string.startswith("#  "):
            out[last] = (*out[last][:2], out[last][2] + " " + tok.string[1:].strip())
        elif tok.type == tokenize.COMMENT and tok.start[1] == 0 and not tok.string.startswith("# ---"):
            out.append(("section", tok.string[1:].strip()))
            last = None
    sections_used = {i for i, item in enumerate(out) if item[0] == "section" and i + 1 < len(out) and out[i + 1][0] == "key"}
    return [item for i, item in enumerate(out) if item[0] == "key" or i in sections_used]


def help_lines(path, values):
    """Every key of the script at path with its value in values (the defaults a config file set) and comment."""
    lines = []
    for item in comments(path, values):
        if item[0] == "section":
            lines.append(f"  # {item[1]}")
        else:
            arg = f"--{item[1]}={values[item[1]]!r}"
            lines.append(f"    {arg:<28}  # {item[2]}" if item[2] else f"    {arg}")
    return lines
