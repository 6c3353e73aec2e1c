"""What the documentation names is there: its commands run, its config files plan, its links resolve.

Over README.md, docs/**/*.md, benchmarks/README.md and results/README.md:

- every ``python -m stages.X`` / ``python -m benchmarks.X`` and ``python benchmarks/x.py`` answers
  ``--help`` with exit 0, every ``stages.a.b`` named in code resolves to a module or attribute, every
  repository path named in code (``stages/...``, ``workflow/...``, ...) exists, every ``make X`` is a
  Makefile target (the commands and names are tried in one interpreter, so torch is imported once);
- every ``--configfile F`` names an existing file, and that file (with every other config file
  named, and config.yaml, which ``make run`` plans) plans: ``snakemake -n`` in a temporary
  directory, its data folders resolved from the repository root, where the documented commands
  run. A config whose data (``../shared``) is absent skips, naming it; a weights file under
  ``weights/``, which the GPU templates ask the user to put there, is an empty stand-in (the dry
  run only checks that it exists);
- every relative link ``[text](path#anchor)`` resolves to a file or folder of the repository, and an
  anchor to a heading of that file, by GitHub's slugs.

Placeholders (``<file>``, ``FILE``) are not checked. The dry runs and the interpreter run side by
side, as tests/test_bad_input.py's do.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from conftest import REPO, pipeline_env, snakemake
from stages.models.weight_names import NAMED_WEIGHTS


def doc_files() -> list[Path]:
    docs = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), REPO / "benchmarks" / "README.md",
            REPO / "results" / "README.md"]
    return [p for p in docs if p.is_file()]


FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"!?\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
MODULE = re.compile(r"python3?\s+-m\s+((?:stages|benchmarks)(?:\.[A-Za-z_]\w*)+)")
SCRIPT = re.compile(r"python3?\s+((?:stages|benchmarks|tests)/[\w/]+\.py)\b")
CONFIGFILE = re.compile(r"--configfile[\s=]+([^\s`'\")\]]+)")
MAKE = re.compile(r"^\s*make\s+([a-z][\w-]*)", re.M)
DOTTED = re.compile(r"stages(?:\.[A-Za-z_]\w*)+")
REPO_PATH = re.compile(r"(?:stages|workflow|tests|benchmarks|profiles|envs|docs)/[\w./*-]*")


def is_placeholder(token: str) -> bool:
    return "<" in token or ">" in token or token.isupper()


def split_code(text: str) -> tuple[str, list[str]]:
    """(the prose, with fenced blocks and code spans blanked; the code: each fenced block's
    lines and each span)."""
    prose, code, fenced = [], [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            prose.append("")
            continue
        if fenced:
            code.append(line)
            prose.append("")
        else:
            prose.append(line)
    joined = "\n".join(prose)
    code += [m.group(2) for m in CODE_SPAN.finditer(joined)]
    return CODE_SPAN.sub(lambda m: " " * len(m.group(0)), joined), code


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the text as shown, lower case, punctuation but `-` and `_`
    dropped, spaces made `-`."""
    text = re.sub(r"(`+)(.+?)\1", r"\2", heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, repeats numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            base = slug(match.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def broken_links(docs: list[Path], root: Path = REPO) -> list[str]:
    """'file:line: target (why)' for every relative link in ``docs`` that does not resolve."""
    problems = []
    for doc in docs:
        prose, _ = split_code(doc.read_text(encoding="utf-8"))
        for match in LINK.finditer(prose):
            target = match.group(2)
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                continue
            line = prose.count("\n", 0, match.start()) + 1
            where = f"{doc.relative_to(root)}:{line}: {target}"
            path_part, _, anchor = target.partition("#")
            dest = (doc.parent / path_part).resolve() if path_part else doc
            if not dest.is_relative_to(root.resolve()):
                problems.append(f"{where} (outside the repository)")
            elif not dest.exists():
                problems.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{where} (no heading with anchor #{anchor} in {dest.relative_to(root.resolve())})")
    return problems


def named(docs: list[Path]) -> dict[str, set[str]]:
    """What the docs name, by kind: modules, scripts, config files, make targets, dotted names,
    repository paths."""
    out: dict[str, set[str]] = {k: set() for k in ("modules", "scripts", "configs", "make", "dotted", "paths")}
    for doc in docs:
        text = doc.read_text(encoding="utf-8")
        _, code = split_code(text)
        out["modules"] |= {m for m in MODULE.findall(text) if not any(map(is_placeholder, m.split(".")))}
        out["scripts"] |= set(SCRIPT.findall(text))
        out["configs"] |= {c for c in CONFIGFILE.findall(text) if not is_placeholder(c)}
        for snippet in code:
            out["make"] |= set(MAKE.findall(snippet))
            stripped = snippet.strip()
            if DOTTED.fullmatch(stripped):
                out["dotted"].add(stripped)
            if REPO_PATH.fullmatch(stripped) and not is_placeholder(stripped):
                out["paths"].add(stripped)
    return out


NAMED = named(doc_files())
# every config file named, with --configfile or as a path, and config.yaml, which `make run` plans
CONFIGS = sorted(NAMED["configs"] | {p for p in NAMED["paths"] if p.endswith(".yaml")
                                        and p.startswith(("workflow/configs/", "tests/config/"))}
                 | {"config.yaml"})

# Run in one interpreter from the repository root: every module and script with --help, every
# dotted name imported. Prints {label: problem} as JSON.
PROBE = r"""
import contextlib, importlib, importlib.util, io, json, runpy, sys, warnings
warnings.simplefilter("ignore")
modules, scripts, dotted = json.loads(sys.argv[1])
problems = {}

def answers_help(label, run):
    out = io.StringIO()
    sys.argv = [label, "--help"]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            run()
    except SystemExit as stop:
        if stop.code not in (0, None):
            problems[label] = f"--help exited {stop.code}: {out.getvalue()[-800:]}"
        return
    except BaseException as error:
        problems[label] = f"--help raised {type(error).__name__}: {error}"
        return
    problems[label] = "--help did not exit (no argument parser?)"

for name in modules:
    answers_help(name, lambda: runpy.run_module(name, run_name="__main__", alter_sys=True))
for path in scripts:
    answers_help(path, lambda: runpy.run_path(path, run_name="__main__"))

def spec(name):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, AttributeError, ValueError):
        return None

for name in dotted:
    parts = name.split(".")
    cut = next((i for i in range(len(parts), 0, -1) if spec(".".join(parts[:i]))), 0)
    try:
        obj = importlib.import_module(".".join(parts[:cut]))
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
    except Exception as error:
        problems[name] = f"does not resolve: {type(error).__name__}: {error}"
print(json.dumps(problems))
"""


def probe() -> dict[str, str]:
    names = [sorted(NAMED["modules"]), sorted(NAMED["scripts"]), sorted(NAMED["dotted"])]
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(names)], cwd=REPO, env=pipeline_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _absolute(value: str) -> str:
    return value if Path(value).is_absolute() else str((REPO / value).resolve())


def planned_config(name: str, workdir: Path) -> tuple[Path | None, str]:
    """(a copy of config ``name`` that plans from ``workdir`` as it would from the repository root,
    or None; why not)."""
    config = yaml.safe_load((REPO / name).read_text())
    dataset = config.get("dataset", {})
    folders = [(f"dataset.{kind}.{key}", dataset.get(kind, {}), key)
               for kind, key in (("folder", "path"), ("voc", "devkit"), ("coco", "path"))]
    folders += [(f"refinements.{r}.path", spec, "path") for r, spec in config.get("refinements", {}).items()
                if spec.get("method") == "imported"]
    for key, block, field in folders:
        if block.get(field) is None:
            continue
        block[field] = _absolute(block[field])
        if not Path(block[field]).is_dir():
            return None, f"{key}: {block[field]} is not there (../shared/data beside the repository?)"
    seg_blocks = [config.get("seg", {})] + [v.get("seg", {}) for v in config.get("variants", {}).values()]
    for block in [config.get("cam", {}), *seg_blocks]:
        weights = block.get("weights")
        if weights is None or weights in NAMED_WEIGHTS:
            continue
        if (REPO / weights).is_file() or Path(weights).is_absolute():
            block["weights"] = _absolute(weights)
        elif Path(weights).parts[0] == "weights":  # the templates' "put the file there": a stand-in
            (workdir / weights).parent.mkdir(parents=True, exist_ok=True)
            (workdir / weights).touch()
    copy = workdir / "config.yaml"
    copy.write_text(yaml.safe_dump(config, sort_keys=False))
    return copy, ""


@pytest.fixture(scope="module")
def checks(tmp_path_factory) -> dict[str, object]:
    """The dry run of every named config and the interpreter probe, side by side."""
    def dry_run(name: str) -> tuple[str, object]:
        if not (REPO / name).is_file():
            return name, ("missing", f"{name}: no such file")
        workdir = tmp_path_factory.mktemp("docs_config")
        copy, why = planned_config(name, workdir)
        if copy is None:
            return name, ("skip", why)
        return name, ("ran", snakemake(workdir, "-n", "--cores", "2", "--quiet", "rules", config=copy,
                                       check=False, timeout=300))

    tmp_path_factory.getbasetemp()  # made once here: the threads below would race to create it
    with ThreadPoolExecutor(max_workers=len(CONFIGS) + 1) as pool:
        probed = pool.submit(probe)
        results = dict(pool.map(dry_run, CONFIGS))
        results["probe"] = probed.result()
    return results


def test_every_named_module_and_script_answers_help_and_every_dotted_name_resolves(checks) -> None:
    assert NAMED["modules"] and NAMED["dotted"], "the docs name no stage: the patterns are wrong"
    assert checks["probe"] == {}


@pytest.mark.parametrize("name", CONFIGS)
def test_every_named_config_file_plans(checks, name: str) -> None:
    state, result = checks[name]
    assert state != "missing", result
    if state == "skip":
        pytest.skip(result)
    assert result.returncode == 0, f"{name} does not plan:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert re.search(r"^train_seg\s+\d+$", result.stdout, re.M), f"{name} plans no segmenter:\n{result.stdout}"


def test_every_named_repository_path_exists() -> None:
    # what runs write (benchmarks/out/, ...) is not in the repository
    written = [line for line in (REPO / ".gitignore").read_text().splitlines() if line.endswith("/")]
    missing = [p for p in sorted(NAMED["paths"])
               if not any(p.startswith(w) for w in written) and not list(REPO.glob(p.rstrip("/")))]
    assert not missing, f"named in the docs but not in the repository: {missing}"


def test_every_make_target_exists() -> None:
    targets = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))
    assert NAMED["make"] and NAMED["make"] <= targets, f"not Makefile targets: {sorted(NAMED['make'] - targets)}"


def test_every_relative_link_and_anchor_resolves() -> None:
    assert not broken_links(doc_files())


def test_readme_stays_a_quick_read() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) < 250


@pytest.mark.parametrize("heading, anchor", [
    ("What check_dataset checks", "what-check_dataset-checks"),
    ("`ce`: the baseline segmenter", "ce-the-baseline-segmenter"),
    ("Install (`make setup`)", "install-make-setup"),
    ("CAM store, CRF, scale, reproducibility", "cam-store-crf-scale-reproducibility"),
    ("mIoU of the default run, commit by commit", "miou-of-the-default-run-commit-by-commit"),
    ("See [the docs](docs/README.md) *now*", "see-the-docs-now"),
])
def test_slug_is_githubs(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_link_check_finds_a_broken_link_and_a_broken_anchor(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "page.md").write_text("# Page\n\n## Part two\n\n## Part two\n")
    (tmp_path / "index.md").write_text(
        "# Index\n\n"
        "[ok](sub/page.md) [ok](sub/page.md#part-two) [ok](sub/page.md#part-two-1) [ok](#index) [ok](sub/)\n"
        "[web](https://example.org/x.md) `[code](nowhere.md)`\n\n"
        "```\n[fenced](nowhere.md)\n```\n\n"
        "[gone](sub/gone.md)\n[bad anchor](sub/page.md#part-three)\n[up](../outside.md)\n")
    problems = broken_links([tmp_path / "index.md"], root=tmp_path)
    assert problems == ["index.md:10: sub/gone.md (no such file)",
                        "index.md:11: sub/page.md#part-three (no heading with anchor #part-three in sub/page.md)",
                        "index.md:12: ../outside.md (outside the repository)"]
