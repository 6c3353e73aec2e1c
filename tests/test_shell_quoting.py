"""No config value ever reaches a shell as shell syntax.

Two checks. The first reads every rule's shell line: each placeholder is quoted (`:q`), but for the
thread and resource counts Snakemake itself fills in. The second is the property behind it, for
every string a config can hold, whatever its key: each string leaf of the config (defaults filled
in) gets its own value full of shell syntax; the workflow either refuses that value, naming its
key, or every job's rendered command carries it as exactly one argument. A key that names a file or
folder that must exist gets one of that hostile name, so its value reaches a command too.
"""
from __future__ import annotations

import copy
import json
import shlex
import string
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from conftest import REPO, TINY_CONFIG, snakemake

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
# Filled in by Snakemake from the rule's own settings, never from a config string.
UNQUOTED_FIELDS = ("threads", "resources.")
MARK = "PWNED"


def test_every_rule_quotes_every_placeholder(tmp_path: Path) -> None:
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

    with SnakemakeApi(OutputSettings()) as api:
        workflow = api.workflow(resource_settings=ResourceSettings(cores=1),
                                config_settings=ConfigSettings(configfiles=[TINY_CONFIG]),
                                storage_settings=StorageSettings(), snakefile=REPO / "Snakefile",
                                workdir=tmp_path)._workflow
        shell_rules = [rule for rule in workflow.rules if rule.shellcmd]
        unquoted = [
            f"{rule.name}: {{{field}{':' + spec if spec else ''}}}"
            for rule in shell_rules
            for _, field, spec, _ in string.Formatter().parse(rule.shellcmd)
            if field is not None and not field.startswith(UNQUOTED_FIELDS) and not (spec or "").endswith("q")
        ]
    assert len(shell_rules) > 10
    assert not unquoted, f"placeholders without :q (a config value would be read by the shell): {unquoted}"


def hostile(n: int, workdir: Path) -> str:
    """Value number ``n``: spaces, both quotes, $(), backticks, ; and & (no slash, so that it can
    also be a file name)."""
    return f"v{n:03d} a'b\"c $(touch {MARK}) `touch {MARK}`; touch {MARK} & echo"


def string_leaves(value: object, path: tuple = ()) -> list[tuple]:
    """Key paths (keys and list positions) of every string in a config."""
    if isinstance(value, str):
        return [path]
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in string_leaves(item, (*path, key))]
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in string_leaves(item, (*path, i))]
    return []


def set_path(config: dict, path: tuple, value: object) -> None:
    node = config
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(node, dict) else node[key]
    node[path[-1]] = value


def dotted(path: tuple) -> str:
    return ".".join(map(str, path))


def schema_string_keys(root: dict) -> set[str]:
    """Names of the schema's properties that can hold a string (directly or as list items)."""
    names: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            names.update(name for name, sub in node.get("properties", {}).items() if can_be_string(root, sub))
            for sub in node.values():
                walk(sub)
        elif isinstance(node, list):
            for sub in node:
                walk(sub)

    walk(root)
    return names


def can_be_string(root: dict, sub: object) -> bool:
    if not isinstance(sub, dict):
        return False
    if "$ref" in sub:
        target = root
        for part in sub["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return can_be_string(root, target)
    types = sub.get("type", [])
    return ("string" in ([types] if isinstance(types, str) else types)
            or any(isinstance(v, str) for v in sub.get("enum", []))
            or isinstance(sub.get("const"), str)
            or any(can_be_string(root, branch) for branch in sub.get("anyOf", []))
            or can_be_string(root, sub.get("items")))


def base_configs(workdir: Path) -> dict[str, tuple[dict, str]]:
    """name -> (a config using every string key of one data-set kind, the key prefix it varies):
    the tiny config with an imported refinement and a variant with its own seg strings, varied
    everywhere but the other data-set kinds; then each other kind, varied under its own block."""
    tiny = yaml.safe_load(TINY_CONFIG.read_text())
    (workdir / "imported_cams").mkdir()
    tiny["refinements"]["ext"] = {"method": "imported", "path": "imported_cams", "format": "array",
                                  "classes": ["a", "b", "c"], "backbone": "theirs", "made_by": "someone"}
    tiny["variants"]["ce_ext"] = {"method": "ce", "pseudo_labels": "ext",
                                  "seg": {"backbone": "resnet18", "weights": "none", "init": "cam"}}
    bases = {"toy": (tiny, "")}
    for kind, key in (("folder", "path"), ("voc", "devkit"), ("coco", "path")):
        (workdir / f"{kind}_data").mkdir()
        config = copy.deepcopy(tiny)
        config["dataset"] = {"kind": kind, kind: {key: f"{kind}_data"}}
        bases[kind] = (config, f"dataset.{kind}.")
    return bases


def rendered_commands(output: str) -> list[str]:
    return [line.split("Shell command: ", 1)[1] for line in output.splitlines() if "Shell command: " in line]


def carried_whole(value: str, commands: list[str]) -> bool | None:
    """Whether every command naming ``value`` parses to arguments one of which holds it whole
    (as itself, or inside a JSON argument); None when no command names it."""
    encoded = json.dumps(value)[1:-1]
    naming = [c for c in commands if value.split(" ")[0] in c]
    if not naming:
        return None
    for command in naming:
        try:
            args = shlex.split(command)
        except ValueError:
            return False
        if not any(value in a or encoded in a for a in args):
            return False
    return True


def test_config_strings_reach_commands_as_single_arguments(tmp_path: Path) -> None:
    schema = yaml.safe_load(SCHEMA.read_text())
    refused: dict[str, str] = {}
    carried: set[str] = set()
    unused: set[str] = set()
    seen_names: set[str] = set()
    for name, (base, prefix) in base_configs(tmp_path).items():
        filled = copy.deepcopy(base)
        validate(filled, str(SCHEMA))
        paths = [p for p in string_leaves(filled) if dotted(p).startswith(prefix)
                 and not (prefix == "" and dotted(p).startswith(("dataset.folder", "dataset.voc", "dataset.coco")))]
        seen_names |= {str(k) for p in string_leaves(filled) for k in p if isinstance(k, str)}
        values = {p: hostile(n, tmp_path) for n, p in enumerate(paths)}
        created: set[tuple] = set()
        for _ in range(len(values) + 3):
            config = copy.deepcopy(base)
            for path, value in values.items():
                set_path(config, path, value)
            config_file = tmp_path / f"{name}.yaml"
            config_file.write_text(yaml.safe_dump(config, sort_keys=False))
            proc = snakemake(tmp_path, "-n", "-p", "--cores", "2", config=config_file, check=False)
            output = proc.stdout + proc.stderr
            if proc.returncode == 0:
                break
            named = [p for p in values if f"{dotted(p)}:" in output]
            assert named, f"{name}: the workflow refused hostile values without naming a key:\n{output[-3000:]}"
            assert "Traceback" not in output, output[-3000:]
            for path in named:
                target = tmp_path / values[path]
                if path not in created and "not a directory" in output:
                    target.mkdir()
                elif path not in created and "existing" in output and "file" in output:
                    target.write_bytes(b"")
                else:
                    refused[dotted(path)] = next(line for line in output.splitlines() if f"{dotted(path)}:" in line)
                    del values[path]
                    continue
                created.add(path)
        else:
            pytest.fail(f"{name}: the dry run never planned:\n{output[-3000:]}")
        commands = rendered_commands(proc.stdout)
        assert commands, proc.stdout[-2000:]
        for path, value in values.items():
            whole = carried_whole(value, commands)
            if whole is None:
                unused.add(dotted(path))
            else:
                assert whole, f"{name}: {dotted(path)} = {value!r} split into several arguments in:\n" + "\n".join(
                    c for c in commands if value.split(" ")[0] in c)
                carried.add(dotted(path))
    assert not (tmp_path / MARK).exists(), "a hostile config value ran a command"
    assert len(carried) > 20 and len(refused) > 10, (sorted(carried), refused)
    # keys accepted but reaching no command are fine (e.g. read only inside the workflow) as long as
    # the workflow still plans; every string key of the schema must have been tried in some base
    untried = schema_string_keys(schema) - seen_names
    assert not untried, f"string keys of the schema no base config sets (add them above): {sorted(untried)}"
