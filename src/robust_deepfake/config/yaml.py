"""The project's YAML: the strict reader of params files (plain data only, no
`!!python/...` tags, no duplicate keys, which DVC refuses and PyYAML would silently keep
the last of; floats such as `5e-05` read as YAML 1.2 does), and plain safe loading and
dumping of the files DVC itself writes and checks (dvc.yaml, *.dvc)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import IO, Any

import yaml

from robust_deepfake.config.problems import ConfigError

YAMLError = yaml.YAMLError

_PLAIN_TAGS = {f"tag:yaml.org,2002:{name}" for name in ("null", "bool", "int", "float", "str", "seq", "map",
                                                          "timestamp")}
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading floats with an exponent and no dot (`5e-05`, which
    DVC writes for `dvc exp run -S train.weight_decay=5e-5`, and `1e3`) as YAML 1.2 does:
    floats, not strings."""


_ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _structure_problems(node: yaml.Node, source: str, path: tuple[str, ...] = (),
                        seen: set[int] | None = None) -> list[str]:
    """Duplicate keys (DVC refuses the file; PyYAML would keep the last silently) and tags
    other than plain data (`!!python/...`), one line each with the dotted key and line.
    A node reached again through an alias is checked once (no recursion on `&a [*a]`)."""
    seen = set() if seen is None else seen
    if id(node) in seen:
        return []
    seen.add(id(node))
    key = ".".join(path) or "<root>"
    if node.tag not in _PLAIN_TAGS:
        return [f"{source}: {key}: YAML tag {node.tag.replace('tag:yaml.org,2002:', '!!')!r} on line "
                f"{node.start_mark.line + 1} is not allowed: params are plain values"]
    problems = []
    if isinstance(node, yaml.MappingNode):
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else f"<{key_node.tag}>"
            line = key_node.start_mark.line + 1
            if name in first_line:
                problems.append(f"{source}: {'.'.join([*path, str(name)])}: duplicate key on lines "
                                f"{first_line[name]} and {line} (DVC refuses the file; keep one)")
            else:
                first_line[name] = line
            problems += _structure_problems(value_node, source, (*path, str(name)), seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            problems += _structure_problems(item, source, (*path, str(index)), seen)
    return problems


def parse_yaml(text: str, source: str) -> Any:
    """The plain data of a params file; ConfigError (one line per problem, with the line
    number) for a syntax error, a duplicate key or a non-plain tag."""
    loader = _ParamsLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        problems = _structure_problems(node, source)
        if problems:
            raise ConfigError("\n".join(problems))
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}:{where}: invalid YAML: {getattr(error, 'problem', None) or error}") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> Any:
    """parse_yaml of a file; ConfigError when it cannot be read."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read: {error}") from None
    return parse_yaml(text, str(path))


def load_yaml(text: str) -> Any:
    """PyYAML's safe load, for files DVC writes and validates itself (dvc.yaml, *.dvc);
    YAMLError when the text is not YAML."""
    return yaml.safe_load(text)


def dump_yaml(data: Any, handle: IO[str]) -> None:
    """PyYAML's safe dump, keys in the order given (a .dvc file DVC reads back)."""
    yaml.safe_dump(data, handle, sort_keys=False)
