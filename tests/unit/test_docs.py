"""The documentation checked against the code: README.md and the pages under docs/.

Documentation drifts silently: a key renamed in the schema, a flag removed from the CLI, a snippet
that no longer imports. These tests make the drift a failure:

- every field of the job schema and every site kind's option has a description, and the generated
  job-file reference (docs/hooks/reference.py) is up to date and lists every key;
- every fenced code block is checked by its language: YAML parses, whole job files validate as
  jobs (and match the example file they name), fragments validate against the schema once merged
  into a base job; Python compiles, self-contained blocks run, and the `# pkg/module.py` blocks are
  written out as files and imported; `fedgrid` command lines parse with the CLI's own argparse
  parser, `make` targets exist, and repository paths they name exist;
- inline `fedgrid <command> --flag` spans name commands and flags the CLI has;
- relative links point to files, and to headings, that exist.

Offline and quick: nothing is started, nothing is fetched.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.util
import re
import shlex
import symtable
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]
LANGUAGES = {"yaml", "python", "sh", "bash", "crontab", "ini", "text"}
SHELL_LIKE = {"sh", "bash", "crontab", "ini"}  # blocks whose `fedgrid ...` lines are command lines
COMPILE_ONLY = "<!-- docs-test: compile-only"  # a marker line before a Python block not to run
README_TEST_COMMAND = "make test"  # what CI runs as "the README's test command" (.ci/run)


def _load_hook(name: str) -> ModuleType:
    """docs/hooks/<name>.py, which is not a package: loaded from its file, as MkDocs loads it."""
    spec = importlib.util.spec_from_file_location(f"fedgrid_docs_{name}", DOCS / "hooks" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


reference = _load_hook("reference")


# -- collecting the blocks ------------------------------------------------------------------------

@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    marker: str  # the non-blank line before the fence

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, dedented by their fence's indent (in lists)."""
    out: list[Block] = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(```+|~~~+)\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = len(m.group(1)), m.group(2), m.group(3)
        body, j = [], i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        marker = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        out.append(Block(page, i + 1, lang, "\n".join(body) + "\n", marker))
        i = j + 1
    return out


ALL = [b for p in PAGES for b in blocks(p)]


def of(*langs: str) -> list[Block]:
    return [b for b in ALL if b.lang in langs]


def test_the_pages_have_snippets_of_every_kind_checked_here():
    """The collection itself works: a broken fence parser would make every other test vacuous."""
    counts = {lang: len(of(lang)) for lang in LANGUAGES}
    assert counts["yaml"] >= 15 and counts["python"] >= 6 and counts["sh"] >= 5, counts


def test_every_code_block_names_a_language_this_test_checks():
    untagged = [f"{b.where} ({b.lang or 'no language'})" for b in ALL if b.lang not in LANGUAGES]
    assert not untagged, f"fenced blocks need one of {sorted(LANGUAGES)}: {untagged}"


# -- the job schema and its reference ---------------------------------------------------------------

def _schema_models() -> tuple[set[type[BaseModel]], set[type[BaseModel]]]:
    """(the job's own blocks and every site kind's Spec with its nested blocks, the strategies' Options)."""
    from fedgrid.flow.config.schema import Job
    from fedgrid.flow.strategies.base import StrategyOptions

    seen: set[type[BaseModel]] = set()
    todo: list[type[BaseModel]] = [Job]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        for field in cls.model_fields.values():
            todo += reference._models_in(field.annotation)
    strategies = {m for m in seen if issubclass(m, StrategyOptions)}
    return seen - strategies, strategies


def test_every_field_of_the_job_schema_and_of_every_site_kind_has_a_description():
    from fedgrid.executors import KINDS, kind_module

    models, _ = _schema_models()
    assert {kind_module(k).Spec for k in KINDS} <= models
    missing = sorted(f"{m.__module__}.{m.__qualname__}.{name}" for m in models
                     for name, field in m.model_fields.items() if not (field.description or "").strip())
    assert not missing, ("give these fields a description (a docstring under the field: the job-file "
                         f"reference is generated from it): {missing}")


def test_every_strategy_option_is_described_in_the_reference():
    """Strategy options live in flow/strategies/; until each carries a description, the reference
    falls back on its source comment or reference.STRATEGY_FALLBACK, and no entry there may be stale."""
    from fedgrid.flow.strategies import STRATEGIES

    _, strategies = _schema_models()
    bare = sorted(f"{m.__qualname__}.{name}" for m in strategies for name in m.model_fields
                  if not reference.description(m, name, reference.STRATEGY_FALLBACK))
    assert not bare, f"strategy options without any description: {bare}"
    options = {name for m in strategies for name in m.model_fields}
    for key in reference.STRATEGY_FALLBACK:
        strategy, _, option = key.rpartition(".")
        known = option in STRATEGIES[strategy].Options.model_fields if strategy else option in options
        assert known, f"STRATEGY_FALLBACK[{key!r}] names no strategy option"


def test_the_job_file_reference_is_generated_from_the_current_schema():
    assert reference.PAGE.is_file(), "run `python docs/hooks/reference.py` (or `make docs`)"
    assert reference.PAGE.read_text() == reference.render(), (
        "docs/reference/job-file.md is out of date with the job schema: run `python docs/hooks/reference.py` "
        "(or `make docs`) and commit it")


def _reference_sections() -> dict[str, str]:
    text = reference.PAGE.read_text()
    parts = re.split(r"^#{2,4} (.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def _paths(cls: type[BaseModel], prefix: str) -> list[str]:
    """Every dotted key under a block, written independently of the generator; unions are checked
    per member below."""
    out = []
    for name, field in cls.model_fields.items():
        out.append(f"{prefix}{name}")
        models = reference._models_in(field.annotation)
        if len(models) == 1:
            sub = f"{prefix}{name}[]" if reference._is_list(field.annotation) else f"{prefix}{name}"
            out += _paths(models[0], f"{sub}.")
    return out


def test_the_reference_lists_every_key_with_its_block_and_every_kinds_options_under_that_kind():
    from fedgrid.executors import KINDS, kind_module
    from fedgrid.flow.config.schema import Job
    from fedgrid.flow.strategies import option_models

    text = reference.PAGE.read_text()
    missing = [p for p in _paths(Job, "") if f"| `{p}` |" not in text]
    sections = _reference_sections()
    for kind in KINDS:
        section = next(body for title, body in sections.items()
                       if title.startswith("`sites[].executor` with kind") and f"`{kind}`" in title)
        missing += [f"{kind}: {p}" for p in _paths(kind_module(kind).Spec, "sites[].executor.")
                    if f"| `{p}` |" not in section and "[]." not in p]
        for p in (p for p in _paths(kind_module(kind).Spec, "sites[].executor.") if "[]." in p):
            missing += [f"{kind}: {p}"] if f"| `{p}` |" not in text else []
    for options in option_models():
        name = options.model_fields["name"].default
        section = next(body for title, body in sections.items()
                       if title.startswith("`strategy` with name") and f"`{name}`" in title)
        missing += [f"{name}: {p}" for p in _paths(options, "strategy.") if f"| `{p}` |" not in section]
    assert not missing, f"keys missing from docs/reference/job-file.md: {missing}"


# -- YAML ---------------------------------------------------------------------------------------------

def _base_job() -> dict[str, Any]:
    return yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())


@pytest.mark.parametrize("block", of("yaml"), ids=lambda b: b.where)
def test_yaml_blocks_are_valid_jobs_or_job_fragments(block: Block, tmp_path):
    from fedgrid.flow.config import parse_job
    from fedgrid.flow.config.schema import Job

    raw = yaml.safe_load(block.text)  # a YAMLError fails here
    assert isinstance(raw, dict), f"{block.where}: expected a mapping of job keys"
    unknown = sorted(set(raw) - set(Job.model_fields))
    assert not unknown, f"{block.where}: not job keys: {unknown}; valid: {sorted(Job.model_fields)}"
    first = block.text.splitlines()[0]
    if m := re.match(r"^#\s*(examples/\S+\.ya?ml)\s*$", first):  # a job file shown as it is in the repo
        assert raw == yaml.safe_load((REPO / m.group(1)).read_text()), f"{block.where} differs from {m.group(1)}"
    if {"name", "sites"} <= set(raw):  # a whole job file: validated as `fedgrid check` reads it
        raw = {**raw, "checkpoint": {"dir": str(tmp_path / "run")}}
        parse_job(raw, tmp_path / "job.yaml")
    else:  # a fragment: the schema's rules, once merged into a base job (no cross-block checks, no imports)
        Job.model_validate({**_base_job(), **raw})


# -- Python -------------------------------------------------------------------------------------------

def _free_names(src: str, name: str) -> set[str]:
    """Globals a block uses but neither defines nor imports (nor are builtins): a fragment of a
    larger program when not empty."""
    top = symtable.symtable(src, name, "exec")
    defined = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported() or s.is_namespace()}
    used: set[str] = set()

    def walk(table: symtable.SymbolTable) -> None:
        for s in table.get_symbols():
            if s.is_referenced() and (table is top or s.is_global()):
                used.add(s.get_name())
        for child in table.get_children():
            walk(child)

    walk(top)
    return used - defined - set(dir(builtins))


def _file_block(block: Block) -> str | None:
    """`pkg/module.py` when the block shows a file of that name (its first line says so)."""
    m = re.match(r"^#\s*([\w/]+\.py)\s*$", block.text.splitlines()[0])
    return m.group(1) if m else None


@pytest.mark.parametrize("block", of("python"), ids=lambda b: b.where)
def test_python_blocks_compile_and_the_self_contained_ones_run(block: Block):
    code = compile(block.text, block.where, "exec")  # a SyntaxError fails here
    if _file_block(block) or block.marker.startswith(COMPILE_ONLY) or _free_names(block.text, block.where):
        return  # files are imported together below; fragments and marked blocks only compile
    exec(code, {"__name__": "__docs__", "__file__": block.where})  # noqa: S102 - the docs' own code


def test_python_files_shown_in_the_docs_import_together(tmp_path, monkeypatch):
    """The `# mypkg/fl.py`-style blocks are one package as a user would write it out: each file is
    written under its path and imported (the stateful client imports the plain one)."""
    files = {path: b for b in of("python") if (path := _file_block(b))}
    assert {"mypkg/fl.py", "mypkg/stateful.py", "mysite/parsl_config.py"} <= set(files), sorted(files)
    for path, block in files.items():
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        (target.parent / "__init__.py").touch()
        target.write_text(block.text)
    monkeypatch.syspath_prepend(str(tmp_path))
    packages = {p.split("/")[0] for p in files}
    for name in [m for m in sys.modules if m.split(".")[0] in packages]:
        monkeypatch.delitem(sys.modules, name)
    try:
        for path in files:
            module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
            assert module.__file__ and Path(module.__file__).is_relative_to(tmp_path)
        assert callable(importlib.import_module("mysite.parsl_config").executor)
        from fedgrid.client import Client

        assert issubclass(importlib.import_module("mypkg.stateful").MyStatefulClient, Client)
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] in packages]:
            del sys.modules[name]


# -- command lines ------------------------------------------------------------------------------------

def _parser():
    from fedgrid.flow.commands.cli import _parser as cli_parser

    return cli_parser()


def _subcommands() -> dict[str, Any]:
    parser = _parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return dict(sub.choices)


_OPERATORS = {"&&", "||", "|", ";", ">", ">>", "2>&1", "&", "<"}


def _invocations(block: Block) -> list[list[str]]:
    """The argument lists of every `fedgrid ...` command line of a shell-like block (after `exec`,
    a path such as .venv/bin/, `VAR=value`, `ExecStart=`, `cd ... &&`), cut at the first shell
    operator or comment."""
    out = []
    for line in block.text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for m in re.finditer(r"(?:^|[\s=/])fedgrid\s+(.*)$", line):
            words: list[str] = []
            for word in shlex.split(m.group(1), comments=True):
                if word in _OPERATORS or word.startswith(("2>", ">")):
                    break
                words.append(word)
            out.append(words)
    return out


def test_shell_blocks_run_fedgrid_with_commands_and_flags_it_has():
    parser, checked = _parser(), 0
    for block in of(*SHELL_LIKE):
        for args in _invocations(block):
            try:
                parser.parse_args(args)
            except SystemExit:
                pytest.fail(f"{block.where}: `fedgrid {shlex.join(args)}` is not a valid fedgrid command line")
            checked += 1
    assert checked >= 10, checked


def test_shell_blocks_name_make_targets_and_repository_paths_that_exist():
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))
    for block in of("sh", "bash"):
        for line in block.text.splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["make"]:
                assert set(words[1:]) <= targets, f"{block.where}: {line!r} names a target the Makefile lacks"
            for word in words:
                for path in re.findall(r"(?:^|[=:])((?:examples|bench|scripts|tests)/[\w./-]+)", word):
                    assert (REPO / path).exists(), f"{block.where}: {path} does not exist"


def _prose(page: Path) -> str:
    """A page without its fenced blocks."""
    return re.sub(r"^(\s*)(```+|~~~+).*?^\1\2\s*$", "", page.read_text(), flags=re.M | re.S)


def test_inline_fedgrid_commands_name_commands_and_flags_it_has():
    commands, checked = _subcommands(), 0
    for page in PAGES:
        for m in re.finditer(r"`fedgrid ([a-z][\w-]*)([^`]*)`", _prose(page)):
            command, rest = m.group(1), m.group(2)
            assert command in commands, f"{page.relative_to(REPO)}: `fedgrid {command}` is not a command"
            flags = {o for a in commands[command]._actions for o in a.option_strings}
            unknown = set(re.findall(r"(?<![\w-])--?[a-z][\w-]*", rest)) - flags
            assert not unknown, f"{page.relative_to(REPO)}: `fedgrid {command}` has no {sorted(unknown)}"
            checked += 1
    assert checked >= 30, checked


# -- links and the README -----------------------------------------------------------------------------

def _headings(page: Path) -> set[str]:
    """The anchors of a page's headings, as MkDocs makes them (snippets included)."""
    text = _prose(page)
    for m in re.finditer(r'^--8<-- "([^":]+)(?::[\w-]+)?"', text, re.M):
        text += "\n" + _prose(REPO / m.group(1))
    return {reference.anchor(h) for h in re.findall(r"^#{1,6} (.+?)\s*$", text, re.M)}


def test_relative_links_point_to_files_and_headings_that_exist():
    broken = []
    for page in PAGES:
        for target in re.findall(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)", _prose(page)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
            elif anchor and resolved.suffix == ".md" and anchor not in _headings(resolved):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, broken


def test_the_readme_is_a_landing_page_that_keeps_the_test_command():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    readme = [b.text.strip() for b in blocks(REPO / "README.md") if b.lang in ("sh", "bash")]
    assert README_TEST_COMMAND in readme, f"README.md must show `{README_TEST_COMMAND}` as a command block"
    for section in ("intro", "install", "commands", "first-job"):  # included by docs/index.md
        assert f"--8<-- [start:{section}]" in text and f"--8<-- [end:{section}]" in text, section
