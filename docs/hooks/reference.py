"""MkDocs hook: the settings and CLI reference pages, generated from the code at build time.

A page holds a marker where generated Markdown goes:

- ``<!-- generated: settings -->``: the global settings, from ``celery_redis_stream.config.OPTIONS``;
- ``<!-- generated: stream-options -->``: the per-stream keys, from ``STREAM_OPTIONS``;
- ``<!-- generated: cli -->``: ``celery redis-stream`` and its subcommands, from the click group
  ``celery_redis_stream.cli:redis_stream``, and the worker options that ``install(app)`` adds;
- ``<!-- include: PATH -->``: a file of the repository (the changelog), its links made absolute.

Nothing is written into ``docs/``: the pages are changed in memory while the site is built, so the
reference cannot drift from the code. An option without a ``meaning`` fails the strict build.
"""

from __future__ import annotations

import inspect
import logging
import re
from pathlib import Path
from typing import Any

import click

log = logging.getLogger("mkdocs.hooks.reference")

ROOT = Path(__file__).resolve().parents[2]
REPO = "https://github.com/celery-redis-stream/celery-redis-stream/blob/main/"
SECTION = re.compile(r"^## [^\n]+\n(?:(?!## ).*\n?)*", re.M)
MARKER = re.compile(r"<!-- (generated|include): ([\w./#-]+) -->")


def _shown(value: object) -> str:
    """A default as Python writes it, strings in double quotes."""
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return f"[{', '.join(map(_shown, value))}]"
    return repr(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def default_of(option: Any) -> str:
    """The default column: the option's own wording, the global setting it inherits, or the value."""
    if option.doc is not None:
        return str(option.doc)
    if option.inherits is not None:
        return f"[`{option.inherits}`](#{option.inherits})"
    return f"`{_shown(option.default)}`"


def options_table(options: dict[str, Any], first: str) -> str:
    """One row per option: name (with an anchor), type, default, meaning."""
    rows = [f"| {first} | type | default | meaning |", "|---|---|---|---|"]
    for name, option in options.items():
        if not option.meaning:
            log.warning("the option %s has no meaning in celery_redis_stream/config.py", name)
        kind = _cell(f"`{option.type}`")
        rows.append(
            f'| <span id="{name}"></span>`{name}` | {kind} | {_cell(default_of(option))} | {_cell(option.meaning)} |'
        )
    return "\n".join(rows) + "\n"


def _option_row(param: click.Parameter) -> str:
    names = ", ".join(f"`{n}`" for n in [*param.opts, *param.secondary_opts])
    if isinstance(param, click.Argument):
        return f"| `{param.human_readable_name}` (argument) | {_cell(_type_of(param))} | required |"
    assert isinstance(param, click.Option)
    extra = " (required)" if param.required else ""
    if param.show_default and param.default is not None and not param.is_flag:
        extra += f" (default: `{param.default}`)"
    return f"| {names} | {_cell(_type_of(param))} | {_cell((param.help or '') + extra)} |"


def _type_of(param: click.Parameter) -> str:
    if isinstance(param, click.Option) and param.is_flag:
        return "flag"
    if isinstance(param.type, click.Choice):
        return " \\| ".join(f"`{c}`" for c in param.type.choices)
    name = param.type.name
    if isinstance(param.type, click.IntRange):
        low, high = param.type.min, param.type.max
        bounds = [f">= {low}"] if low is not None else []
        bounds += [f"<= {high}"] if high is not None else []
        name = " ".join(["integer", *bounds])
    if isinstance(param, click.Option) and param.multiple:
        name += ", repeatable"
    return name


def command_section(command: click.Command, path: str, level: int) -> str:
    """A heading, the usage line and help text, and a table of the options, for one command."""
    ctx = click.Context(command, info_name=path)
    usage = " ".join(command.collect_usage_pieces(ctx))
    out = [f"{'#' * level} `{path}`", "", "```text", f"{path} {usage}".rstrip(), "```", ""]
    help_text = inspect.cleandoc(command.help or "")
    if help_text:
        out += [help_text.replace("\b\n", ""), ""]
    params = [p for p in command.params if p.name != "help"]
    if params:
        out += ["| option | type | meaning |", "|---|---|---|", *(_option_row(p) for p in params), ""]
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            out.append(command_section(command.commands[name], f"{path} {name}", level + 1))
    return "\n".join(out)


def worker_options() -> str:
    """The options ``install(app)`` adds to ``celery worker``, read from a fresh app."""
    from celery import Celery

    import celery_redis_stream

    app = Celery("reference")
    celery_redis_stream.install(app)
    rows = ["| option | type | meaning |", "|---|---|---|"]
    rows += [_option_row(o) for o in app.user_options["worker"] if isinstance(o, click.Option)]
    return "\n".join(rows) + "\n"


def cli_reference() -> str:
    from celery_redis_stream.cli import redis_stream

    return (
        command_section(redis_stream, "celery -A proj redis-stream", 2)
        + "\n## `celery worker` options\n\nAdded by `celery_redis_stream.install(app)`:\n\n"
        + worker_options()
    )


def _absolute_links(text: str) -> str:
    """Relative links of a repository file point at the repository, since the site does not hold it."""
    return re.sub(r"\]\((?!https?://|#|mailto:|\./)([^)]+)\)", lambda m: f"]({REPO}{m.group(1)})", text)


def _section(text: str, slug: str) -> str:
    """The ``## `` section of ``text`` whose heading slugifies to ``slug``, heading included."""
    for found in SECTION.finditer(text):
        heading = found.group(0).split("\n", 1)[0][3:]
        if re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-") == slug:
            return found.group(0).split("<!-- end of section -->", 1)[0]
    raise ValueError(f"no section #{slug}")


def _include(what: str) -> str:
    """A repository file, or one ``## `` section of it (``README.md#quick-start``), as a docs page shows it."""
    path, _, slug = what.partition("#")
    text = (ROOT / path).read_text()
    if not slug:
        return _absolute_links(text)
    # The README's links into docs/ are the site's own pages; others point at the repository.
    return _absolute_links(re.sub(r"\]\(docs/", "](./", _section(text, slug)))


def generated(kind: str, what: str) -> str:
    from celery_redis_stream.config import OPTIONS, STREAM_OPTIONS

    if kind == "include":
        return _include(what)
    if what == "settings":
        return options_table(OPTIONS, "setting")
    if what == "stream-options":
        return options_table(STREAM_OPTIONS, "key")
    if what == "cli":
        return cli_reference()
    raise ValueError(f"unknown generated block {what!r}")


def expand(markdown: str) -> str:
    return MARKER.sub(lambda m: generated(m.group(1), m.group(2)), markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return expand(markdown)
