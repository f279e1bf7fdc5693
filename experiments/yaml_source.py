"""YAML files → data plus the line of every key: the one reader of orch's YAML files.

Grid files (:func:`orchestrator.grid.load.load_grid`) and run configs
(:func:`experiments.config.load`) both come through :func:`read_yaml`, so both give
the line and column of a syntax error and refuse a key given twice in one mapping
(PyYAML alone silently keeps the last one). Every failure is a
:class:`~experiments.config.ConfigError` naming the file.

Key paths join mapping keys with dots and list items with ``[i]``: ``grid.model.norm``,
``include[1].model.gn_groups``. This module imports neither torch nor mlflow.

Bounded input. A grid or run config is a few kilobytes, so anything far larger is refused
before Python objects are built: a file over :data:`MAX_YAML_BYTES`, a document of more
than :data:`MAX_YAML_NODES` nodes, or one whose aliases expand it past that many (a
"billion laughs" file is a few hundred bytes whose nine nested aliases stand for 9**9
values). Aliases make the composed nodes a DAG, so every node is counted as often as it
is reached, not once. Within these limits parsing takes about 2 s at worst here, all of
it in Python code (PyYAML's pure-Python loader), so Ctrl-C interrupts it at once.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Any

import yaml

from experiments.errors import ConfigError

__all__ = ["MAX_YAML_BYTES", "MAX_YAML_NODES", "YamlSource", "line_of", "parse_yaml", "read_yaml"]

MERGE_TAG = "tag:yaml.org,2002:merge"  # "<<: *anchor" keys merge a mapping; they name no key
# Sizes far beyond any grid or run config (a few KB, a few hundred values). At the node
# limit PyYAML's pure-Python composer takes about 2 s and 60 MB; 5 MB of comments or one
# long string scans in about 2 s (2-core AMD EPYC VM, PyYAML 6, 2026-11-30).
MAX_YAML_BYTES = 5 * 1024 * 1024  # characters of text, ~bytes
MAX_YAML_NODES = 100_000  # values after alias expansion (every reference counts)
TOO_BIG_FIX = "a grid or run config is a few kilobytes, so check that this is the right file"


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
        with open(path) as f:  # the locale's encoding and universal newlines, as Path.read_text
            size = os.fstat(f.fileno())
            if stat.S_ISREG(size.st_mode) and size.st_size > MAX_YAML_BYTES:  # refused unread
                raise _too_big(source, size.st_size)
            text = f.read(MAX_YAML_BYTES + 1)  # a device or pipe has no size: read no more than the limit
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise ConfigError(f"cannot read the {what} ({reason}); check the path", source=source) from None
    return parse_yaml(text, source)


def _too_big(source: str, size: int | None) -> ConfigError:
    """The refusal of a file over MAX_YAML_BYTES (``size``: its size in bytes, when known)."""
    limit = f"the {MAX_YAML_BYTES // 2**20} MB limit of a YAML input"
    what = f"is {size / 2**20:.1f} MB, over {limit}" if size else f"is longer than {limit}"
    return ConfigError(f"the file {what}; {TOO_BIG_FIX}", source=source)


def parse_yaml(text: str, source: str) -> YamlSource:
    """Parse ``text`` (one document) and index the line of every key path.

    Raises:
        ConfigError: invalid YAML (with its line and column), a key given twice in one
            mapping (with both lines, ``key`` = its key path), or a document over the
            size limits (:data:`MAX_YAML_BYTES`, :data:`MAX_YAML_NODES`).

    Example:
        >>> doc = parse_yaml("name: t\\ngrid:\\n  model.norm: [bn]\\n", "g.yaml")
        >>> doc.data["grid"], doc.lines["grid.model.norm"]
        ({'model.norm': ['bn']}, 3)
    """
    if len(text) > MAX_YAML_BYTES:
        raise _too_big(source, None)
    loader = _BoundedLoader(text, source)
    try:
        node = loader.get_single_node()
        index = _KeyLines(source)
        if node is not None:
            index.walk(node, "")  # before construction: it counts what aliases expand to
            data = loader.construct_document(node)
        else:
            data = None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"invalid YAML{where}: {problem}; fix the syntax", source=source) from None
    except RecursionError:  # PyYAML composes nested blocks recursively
        raise ConfigError("the YAML nests lists or mappings hundreds of levels deep; a grid or run config "
                          "nests a few levels, so flatten it", source=source) from None
    except ConfigError:
        raise
    except ValueError as err:  # an integer of more than 4300 digits: Python refuses to convert it
        reason = str(err).split(";")[0]
        raise ConfigError(f"a value cannot be read ({reason}); fix the value", source=source) from None
    finally:
        loader.dispose()
    return YamlSource(source=source, text=text, data=data, lines=index.lines)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe, pure-Python loader that stops composing after MAX_YAML_NODES nodes,
    so that a long file is refused before its nodes fill memory."""

    def __init__(self, text: str, source: str):
        super().__init__(text)
        self.source = source
        self.composed = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self.composed += 1
        if self.composed > MAX_YAML_NODES:
            raise ConfigError(f"the YAML holds more than {MAX_YAML_NODES:,} values; {TOO_BIG_FIX}",
                              source=self.source)
        return super().compose_node(parent, index)


class _KeyLines:
    """One walk over a composed document: the line of every key path, a key given twice
    refused, and every node counted each time it is reached (an alias repeats its anchor's
    whole block, so a few hundred bytes can stand for billions of values)."""

    def __init__(self, source: str):
        self.source = source
        self.lines: dict[str, int] = {}  # key path → 1-based line
        self.reached = 0
        self.active: set[int] = set()  # nodes on the current path: a recursive alias stops there

    def walk(self, node: yaml.Node, path: str, *, record: bool = True) -> None:
        """Record the line of every key path under ``node`` (unless ``record`` is false: a
        merged or complex key, counted only); refuse a key given twice."""
        if id(node) in self.active:  # a recursive alias; constructing it fails later with its own message
            return
        self.reached += 1
        if self.reached > MAX_YAML_NODES:  # composing stopped at the same count, so aliases did this
            raise ConfigError(f"the YAML's aliases (*name) expand it to more than {MAX_YAML_NODES:,} values "
                              "(each alias repeats its anchor's whole block); write the values out instead "
                              "of nesting aliases", source=self.source)
        self.active.add(id(node))
        if isinstance(node, yaml.MappingNode):
            self._mapping(node, path, record)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                if record:
                    self.lines.setdefault(f"{path}[{i}]", item.start_mark.line + 1)
                self.walk(item, f"{path}[{i}]", record=record)
        self.active.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: str, record: bool) -> None:
        seen: dict[str, int] = {}
        uncounted: list[yaml.Node] = []  # merged mappings and complex keys: counted after the written keys
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == MERGE_TAG:
                uncounted += [value_node] if key_node.tag == MERGE_TAG else [key_node, value_node]
                continue
            key, line = key_node.value, key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(
                    f"{key!r} is given twice (lines {seen[key]} and {line}); keep one of them",
                    key=_join(path, key),
                    source=self.source,
                )
            seen[key] = line
            if record:
                self.lines.setdefault(_join(path, key), line)
            self.walk(value_node, _join(path, key), record=record)
        for other in uncounted:
            self.walk(other, path, record=False)
