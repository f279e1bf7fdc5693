"""YAML files → data plus the line of every key: the one reader of orch's YAML files.

Grid files (:func:`orchestrator.grid.load_grid`) and run configs
(:func:`experiments.config.load`) both come through :func:`read_yaml`, so both give
the line and column of a syntax error and refuse a key given twice in one mapping
(PyYAML alone silently keeps the last one). Every failure is a
:class:`~experiments.config.ConfigError` naming the file.

Key paths join mapping keys with dots and list items with ``[i]``: ``grid.model.norm``,
``include[1].model.gn_groups``. This module imports neither torch nor mlflow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from experiments.config import ConfigError

__all__ = ["YamlSource", "line_of", "parse_yaml", "read_yaml"]

MERGE_TAG = "tag:yaml.org,2002:merge"  # "<<: *anchor" keys merge a mapping; they name no key


@dataclass(frozen=True)
class YamlSource:
    """A parsed YAML file: its text, its data and the line where each key path starts."""

    source: str  # the file, as error messages name it
    text: str
    data: Any  # None for an empty file
    lines: dict[str, int] = field(default_factory=dict)  # key path → 1-based line



def line_of(lines: dict[str, int], path: str | None) -> int | None:
    """The line of key path ``path`` in ``lines``, else of its nearest parent that has one."""
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return None


def read_yaml(path: str | os.PathLike[str], what: str = "file") -> YamlSource:
    """Read and parse the YAML file ``path``; ``what`` names it in a read error ("grid file").

    Raises:
        ConfigError: the file cannot be read, is not valid YAML, or gives a key twice.
    """
    source = str(path)
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise ConfigError(f"cannot read the {what} ({reason}); check the path", source=source) from None
    return parse_yaml(text, source)


def parse_yaml(text: str, source: str) -> YamlSource:
    """Parse ``text`` (one document) and index the line of every key path.

    Raises:
        ConfigError: invalid YAML (with its line and column) or a key given twice in one
            mapping (with both lines, ``key`` = its key path).

    Example:
        >>> doc = parse_yaml("name: t\\ngrid:\\n  model.norm: [bn]\\n", "g.yaml")
        >>> doc.data["grid"], doc.lines["grid.model.norm"]
        ({'model.norm': ['bn']}, 3)
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[str, int] = {}
        if node is not None:
            _index_lines(node, "", lines, source, set())
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"invalid YAML{where}: {problem}; fix the syntax", source=source) from None
    finally:
        loader.dispose()
    return YamlSource(source=source, text=text, data=data, lines=lines)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _index_lines(node: yaml.Node, path: str, lines: dict[str, int], source: str, active: set[int]) -> None:
    """Record the line of every key path under ``node``; refuse a key given twice."""
    if id(node) in active:  # a recursive alias; constructing it fails later with its own message
        return
    active.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == MERGE_TAG:
                continue
            key, line = key_node.value, key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(
                    f"{key!r} is given twice (lines {seen[key]} and {line}); keep one of them",
                    key=_join(path, key),
                    source=source,
                )
            seen[key] = line
            lines.setdefault(_join(path, key), line)
            _index_lines(value_node, _join(path, key), lines, source, active)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.setdefault(f"{path}[{i}]", item.start_mark.line + 1)
            _index_lines(item, f"{path}[{i}]", lines, source, active)
    active.discard(id(node))
