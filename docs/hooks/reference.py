"""MkDocs hook: the reference pages, generated from the code rather than retyped.

A page that holds one of these markers gets it replaced by the generated Markdown:

- `<!-- reference: cli -->`: every `se-onnx` subcommand from `se_onnx.cli.build_parser()`, with its
  usage, description and every option (help, default, choices);
- `<!-- reference: server-settings -->`: the server's settings model in `service/config.py`
  (`ServerSettings`, a pydantic-settings model; while there is none, whatever pydantic model
  holds the server's settings there, or else the options of `se-onnx serve`);
- `<!-- reference: model-config -->`: `ModelConfig`, a model's `config.json`, and the models
  its fields hold.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[2]


def on_config(config, **kwargs):
    # Document this checkout's code, ahead of any other copy on the path (MkDocs restores the
    # path after loading hooks, so not at import).
    sys.path.insert(0, str(ROOT))
    return config


def on_page_markdown(markdown: str, **kwargs) -> str:
    return re.sub(r"<!-- reference: ([\w-]+) -->", lambda match: GENERATORS[match[1]](), markdown)


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(value: object) -> str:
    return f"`{value}`" if value not in ("", None) else ""


# The command line -----------------------------------------------------------------------------


def subcommand_parsers() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """`se-onnx`'s parser and its subcommands, built without SE_ONNX_* variables: serve's
    defaults come from them, and the reference gives the defaults, not this shell's settings."""
    from se_onnx.cli import build_parser

    saved = {name: os.environ.pop(name) for name in list(os.environ) if name.startswith("SE_ONNX_")}
    try:
        parser = build_parser()
    finally:
        os.environ.update(saved)
    return parser, next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def cli_reference() -> str:
    parser, subcommands = subcommand_parsers()
    summaries = {action.dest: action.help for action in subcommands._choices_actions}
    parts = [_usage(parser), "", "| command | what it does |", "|---|---|"]
    parts += [f"| [`{name}`](#se-onnx-{name}) | {_cell(summaries[name])} |" for name in subcommands.choices]
    for name, sub in subcommands.choices.items():
        parts += ["", f"## `se-onnx {name}`", "", _usage(sub), "", sub.description or summaries[name], ""]
        parts.append(parser_options(sub))
    return "\n".join(parts)


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=100)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return f"```text\n{formatter.format_help().strip()}\n```"


def parser_options(parser: argparse.ArgumentParser) -> str:
    """One table per argument group: each option, its default and choices, and its help."""
    formatter = argparse.HelpFormatter(parser.prog)
    tables = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        rows = [f"**{group.title}**", "", "| option | default | description |", "|---|---|---|"]
        for action in actions:
            names = ", ".join(action.option_strings) or action.metavar or action.dest
            if action.option_strings and action.nargs != 0:
                names += f" {formatter._format_args(action, action.dest.upper())}"
            notes = [formatter._expand_help(action) if action.help else ""]
            if action.choices:
                notes.append("choices: " + ", ".join(f"`{choice}`" for choice in action.choices))
            if action.required and action.option_strings:
                notes.append("required")
            description = "; ".join(note for note in notes if note)
            rows.append(f"| `{names}` | {_code(_default(action))} | {_cell(description)} |")
        tables.append("\n".join(rows))
    return "\n\n".join(tables)


def _default(action: argparse.Action) -> object:
    default = action.default
    if default is None or default is False or default is argparse.SUPPRESS or default in ((), []):
        return None
    if not action.option_strings:
        return None
    return str(default).replace(f"{ROOT}{os.sep}", "")  # a path in this checkout, as the user's would read


# Pydantic models ------------------------------------------------------------------------------


def model_table(model: type[BaseModel], env_prefix: str | None = None) -> str:
    """A table of a pydantic model's fields: type, default, constraints and description (with
    each field's environment variable when `env_prefix` is given)."""
    head = ["field", "type", "default", "constraints", "description"]
    if env_prefix is not None:
        head.insert(1, "environment variable")
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, field in model.model_fields.items():
        default = "required" if field.is_required() else _code(_json(field.get_default(call_default_factory=True)))
        constraints = ", ".join(_constraints(field.metadata))
        description = field.description or _nested_doc(field.annotation)
        cells = [f"`{name}`", _code(_type_name(field.annotation)), default, constraints, _cell(description)]
        if env_prefix is not None:
            alias = field.validation_alias if isinstance(field.validation_alias, str) else None
            cells.insert(1, f"`{(alias or env_prefix + name).upper()}`")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _json(value: object) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(exclude_none=True)
    try:
        return json.dumps(value)
    except TypeError:
        return str(value)


def _type_name(annotation: object) -> str:
    name = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    return name or re.sub(r"\b(?:\w+\.)+(\w+)", r"\1", str(annotation)).replace("NoneType", "None")


_BOUNDS = {
    "gt": ">",
    "ge": "≥",
    "lt": "<",
    "le": "≤",
    "min_length": "length ≥",
    "max_length": "length ≤",
    "pattern": "matches",
}


def _constraints(metadata: list) -> list[str]:
    return [
        f"{symbol} `{getattr(item, key)}`"
        for item in metadata
        for key, symbol in _BOUNDS.items()
        if getattr(item, key, None) is not None
    ]


def _models_in(annotation: object) -> list[type[BaseModel]]:
    """The pydantic models a field's type holds (`X`, `X | None`, `list[X]`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in getattr(annotation, "__args__", ()) for model in _models_in(arg)]


def _nested_doc(annotation: object) -> str:
    return " ".join((model.__doc__ or "").strip() for model in _models_in(annotation))


def models_reference(model: type[BaseModel], env_prefix: str | None = None) -> str:
    """The model's table, then one for each model its fields hold (titled by the field's path)."""
    parts, queue = [model_table(model, env_prefix)], [("", model)]
    while queue:
        path, current = queue.pop(0)
        for name, field in current.model_fields.items():
            for nested in _models_in(field.annotation):
                doc = (nested.__doc__ or "").strip()
                parts.append(f"### `{path}{name}`\n\n" + (f"{doc}\n\n" if doc else "") + model_table(nested))
                queue.append((f"{path}{name}.", nested))
    return "\n\n".join(parts)


def server_settings_reference() -> str:
    from service.config import ServerSettings as model

    prefix = model.model_config.get("env_prefix", "")
    intro = f"`{model.__module__}.{model.__name__}`" + (f": {(model.__doc__ or '').strip()}" if model.__doc__ else "")
    return intro + "\n\n" + models_reference(model, prefix)


def model_config_reference() -> str:
    from service.config import ModelConfig

    return models_reference(ModelConfig)


GENERATORS = {
    "cli": cli_reference,
    "server-settings": server_settings_reference,
    "model-config": model_config_reference,
}
