"""Writes docs/api.md, the API reference, from the docstrings of fundl's public names.

Command: python scripts/make_api_docs.py            (rewrite docs/api.md)
         python scripts/make_api_docs.py --check    (exit 1 if docs/api.md is stale)

The public names of a package are the ones its ``__init__.py`` re-exports from inside
fundl (``from fundl.x._y import name as name``) and those in its ``__all__``; the public
names of a plain module (``fundl.losses``) are the functions and classes defined in it.
Each entry gives the signature (``inspect.signature``, defaults as written in the source)
and the docstring. The output depends on nothing but the source: no addresses, no dates.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "api.md"
MODULES = [
    "fundl",
    "fundl.train",
    "fundl.losses",
    "fundl.metrics",
    "fundl.datasets",
    "fundl.models",
    "fundl.runs",
    "fundl.distributed",
    "fundl.plots",
]
SECTIONS = {"Args", "Arguments", "Attributes", "Raises", "Returns", "Yields", "Example", "Examples", "Note", "Notes"}
LISTS = {"Args", "Arguments", "Attributes", "Raises"}
ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


# --- Which names are public ------------------------------------------------------------


def _tree(module: types.ModuleType) -> ast.Module:
    return ast.parse(Path(module.__file__).read_text())


def public_names(module: types.ModuleType) -> dict[str, str]:
    """``{public name: the module it is defined in}``, sorted by name (case-insensitive)."""
    names: dict[str, str] = {}
    if Path(module.__file__).name == "__init__.py":
        for node in ast.walk(_tree(module)):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("fundl"):
                for alias in node.names:
                    names[alias.asname or alias.name] = f"{node.module}"
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            names.setdefault(name, getattr(obj, "__module__", None) or module.__name__)
    else:
        for name, obj in vars(module).items():
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module.__name__:
                names[name] = module.__name__
    public = {
        name: origin
        for name, origin in names.items()
        if not name.startswith("_")
        and hasattr(module, name)
        and not isinstance(getattr(module, name), types.ModuleType)
    }
    return dict(sorted(public.items(), key=lambda item: (item[0].lower(), item[0])))


# --- Signatures ---------------------------------------------------------------------------


def _annotation(annotation) -> str:
    if isinstance(annotation, str):
        return annotation.strip("'\"")
    if isinstance(annotation, __import__("typing").ForwardRef):
        return annotation.__forward_arg__
    return ADDRESS.sub("", inspect.formatannotation(annotation))


def _source_defaults(fn) -> dict[str, str]:
    """The default of each parameter as written in ``fn``'s source (``{}`` if unavailable)."""
    try:
        node = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
    except (OSError, TypeError, SyntaxError, IndexError):
        return {}
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return {}
    args = node.args
    positional = args.posonlyargs + args.args
    found = {a.arg: ast.unparse(d) for a, d in zip(positional[len(positional) - len(args.defaults) :], args.defaults)}
    found.update({a.arg: ast.unparse(d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None})
    return found


def signature(name: str, obj) -> str:
    """``name(params) -> result`` with annotations and defaults as readable, stable text."""
    target = obj.__init__ if inspect.isclass(obj) and "__init__" in vars(obj) else obj
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        sig = None
    params = list(sig.parameters.values()) if sig else []
    if inspect.isclass(obj) and (
        sig is None or [p.kind for p in params] == [inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD]
    ):
        bases = [b.__name__ for b in obj.__bases__ if b is not object]
        return f"{name}({', '.join(bases)})" if bases else name
    if sig is None:
        return f"{name}(...)"
    if params and params[0].name in ("self", "cls") and not inspect.isclass(obj):
        params = params[1:]
    defaults = _source_defaults(target)
    parts = []
    for index, p in enumerate(params):
        if p.kind is p.KEYWORD_ONLY and (
            index == 0 or params[index - 1].kind not in (p.KEYWORD_ONLY, p.VAR_POSITIONAL)
        ):
            parts.append("*")
        text = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            text += f" = {defaults.get(p.name) or ADDRESS.sub('', repr(p.default))}"
        parts.append(text)
        if p.kind is p.POSITIONAL_ONLY and (
            index + 1 == len(params) or params[index + 1].kind is not p.POSITIONAL_ONLY
        ):
            parts.append("/")
    result = (
        ""
        if sig.return_annotation is sig.empty or inspect.isclass(obj)
        else f" -> {_annotation(sig.return_annotation)}"
    )
    return f"{name}({', '.join(parts)}){result}"


def value_line(name: str, obj, origin: str) -> tuple[str, str]:
    """A constant or type alias: ``NAME = source`` (or its type and keys) and its comment or docstring."""
    try:
        module = importlib.import_module(origin)
        tree, lines = _tree(module), Path(module.__file__).read_text().splitlines()
    except (ImportError, OSError, TypeError):
        tree, lines = ast.Module(body=[], type_ignores=[]), []
    source, doc = None, ""
    for index, node in enumerate(tree.body):
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        if (
            any(isinstance(t, ast.Name) and t.id in (name, getattr(obj, "__name__", None)) for t in targets)
            and node.value
        ):
            source = ast.unparse(node.value)
            after = tree.body[index + 1] if index + 1 < len(tree.body) else None
            if (
                isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                doc = inspect.cleandoc(after.value.value)
            else:  # the comment lines just above the assignment
                above, line = [], node.lineno - 2
                while line >= 0 and lines[line].strip().startswith("#"):
                    above.insert(0, lines[line].strip().lstrip("#").strip())
                    line -= 1
                doc = " ".join(above)
    if isinstance(obj, dict):
        keys = ", ".join(repr(k) for k in obj)
        return f"{name}: dict with keys {keys}", doc
    text = source if source and len(source) <= 100 else ADDRESS.sub("", repr(obj))
    if len(text) > 100:
        text = type(obj).__name__
    return f"{name} = {text}", doc


# --- Docstrings as Markdown ------------------------------------------------------------------


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def docstring_markdown(doc: str) -> str:  # noqa: C901  (one branch per docstring section kind)
    """Google-style docstring -> Markdown: sections in bold, argument lists as bullets,
    examples and indented blocks fenced (as ``pycon`` or ``text``, never run)."""
    lines = inspect.cleandoc(doc).splitlines()
    out: list[str] = []
    section = None
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            out.append("")
            i += 1
            continue
        if _indent(line) == 0:
            header = stripped[:-1] if stripped.endswith(":") else None
            if header in SECTIONS:
                section = header
                out += [f"**{header}:**", ""]
            else:
                section = None
                out.append(stripped[:-1] if stripped.endswith("::") else stripped)
            i += 1
            continue
        # An indented block: everything up to the next non-blank line at indent 0.
        block = []
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > 0):
            block.append(lines[i])
            i += 1
        while block and not block[-1].strip():
            block.pop()
        block = textwrap.dedent("\n".join(block)).splitlines()
        if section in LISTS and not block[0].startswith(">>>"):
            items: list[str] = []
            for item in block:
                if item and not item[0].isspace():
                    head, sep, rest = item.partition(": ")
                    if sep and re.fullmatch(r"[\w.*, ]+", head):
                        item = f"`{head}`: {rest}"
                    items.append(f"- {item}")
                elif items and item.strip():
                    items[-1] += " " + item.strip()
            out += items + [""]
        elif section in ("Returns", "Yields", "Note", "Notes") and not block[0].startswith(">>>"):
            out += [" ".join(part.strip() for part in block if part.strip()), ""]
        else:
            language = "pycon" if block[0].startswith(">>>") else "text"
            out += [f"```{language}", *block, "```", ""]
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


# --- The page ---------------------------------------------------------------------------------


def _defined_in_fundl(obj) -> bool:
    """A function or class of fundl's own (not a type alias or an object from another library)."""
    own = (inspect.isclass(obj) or inspect.isfunction(obj)) and not isinstance(obj, types.GenericAlias)
    return own and (getattr(obj, "__module__", "") or "").startswith("fundl")


def entry(qualified: str, obj, origin: str) -> list[str]:
    short = qualified.rsplit(".", 1)[-1]
    if _defined_in_fundl(obj):
        kind = "class" if inspect.isclass(obj) else ""
        out = [
            f"### `{qualified}`",
            "",
            "```text",
            (f"class {signature(short, obj)}" if kind else signature(short, obj)),
            "```",
            "",
        ]
        own = obj.__doc__ if inspect.isclass(obj) else inspect.getdoc(obj)
        if own and not (inspect.isclass(obj) and own.startswith(f"{obj.__name__}(")):  # skip auto-made NamedTuple docs
            out += [docstring_markdown(own)]
        if inspect.isclass(obj):
            for name, member in vars(obj).items():
                if isinstance(member, (classmethod, staticmethod)):
                    member = member.__func__
                if (name.startswith("_") and name != "__call__") or not inspect.isfunction(member):
                    continue
                out += [f"#### `{short}.{name}`", "", "```text", signature(name, member), "```", ""]
                if inspect.getdoc(member):
                    out += [docstring_markdown(inspect.getdoc(member))]
        return out
    line, doc = value_line(short, obj, origin)
    out = [f"### `{qualified}`", "", "```text", line, "```", ""]
    return out + ([doc, ""] if doc else [])


def render() -> str:
    out = [
        "# API reference",
        "",
        "<!-- Generated by `python scripts/make_api_docs.py` from the docstrings; do not edit by hand. -->",
        "",
        "Every public name of " + ", ".join(f"[`{m}`](#{m.replace('.', '')})" for m in MODULES) + ", "
        "with its signature and docstring. The layers are documented once, under `fundl`.",
        "",
    ]
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        names = public_names(module)
        out += [f"## {module_name}", ""]
        if module.__doc__:
            out += [docstring_markdown(module.__doc__)]
        out += [", ".join(f"[`{n}`](#{(module_name + n).replace('.', '').lower()})" for n in names), ""]
        for name, origin in names.items():
            out += entry(f"{module_name}.{name}", getattr(module, name), origin)
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).rstrip() + "\n"


def formatted(text: str) -> str:
    """``text`` as ``ruff format`` leaves it (its ``pycon`` examples formatted), so that the lint test and
    ``--check`` agree; unchanged where ruff is not installed."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ruff", "format", "--stdin-filename", str(ROOT / "docs" / "api.md"), "-"],
            input=text,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return text
    return done.stdout if done.returncode == 0 and done.stdout else text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/api.md differs from what would be written")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    text = formatted(render())
    shown = OUTPUT.relative_to(ROOT) if OUTPUT.is_relative_to(ROOT) else OUTPUT
    if args.check:
        if not OUTPUT.is_file() or OUTPUT.read_text() != text:
            print(f"{shown} is stale: run python scripts/make_api_docs.py", file=sys.stderr)
            return 1
        print(f"{shown} is up to date")
        return 0
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_text(text)
    print(f"wrote {shown} ({text.count(chr(10))} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
