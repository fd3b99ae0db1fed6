"""The option reference of ``run_eval.py``, generated from the structured config in
``eval_recorder/app/config.py`` (its fields and the docstring under each): the Markdown
table the README carries (a test fails if the README's copy drifts) and the same as plain
text for ``--help``, with the config groups and their choices. ``register_help_resolvers()``
puts them into Hydra's help template (``conf/config.yaml``).

Run ``python -m eval_recorder.app.options_doc`` to print the Markdown table.
"""

from __future__ import annotations

import ast
import re
import dataclasses
import inspect
from enum import Enum

from eval_recorder.app import config as config_module

__all__ = ["config_groups_help", "option_rows", "options_help", "options_table", "register_help_resolvers"]


_SECTIONS = {
    "": config_module.MainConfig,
    "env": config_module.EnvConfig,
    "algorithm": config_module.AlgorithmSection,
    "training": config_module.TrainingConfig,
    "evaluation": config_module.EvaluationConfig,
    "recording": config_module.RecordingConfig,
    "wandb": config_module.WandbConfig,
    "mlflow": config_module.MlflowConfig,
    "ray": config_module.RayConfig,
}


def _field_docs(cls) -> dict[str, str]:
    """{field: the string literal written right under it} of a dataclass."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr):
            value = following.value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                docs[node.target.id] = " ".join(value.value.split())
    return docs


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "(required)"
    if isinstance(value, Enum):
        value = value.value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if value == "???":
        return "(from the preset)"
    return str(value)


def _type_name(field: dataclasses.Field) -> str:
    enum = getattr(config_module, str(field.type), None)
    if isinstance(enum, type) and issubclass(enum, Enum):
        return "/".join(member.value for member in enum)
    name = str(field.type)
    optional = re.fullmatch(r"Optional\[(.*)\]", name)
    return optional.group(1) if optional else name


def option_rows() -> list[tuple[str, str, str, str]]:
    """(key, type, default, doc) of every option, section by section."""
    rows = []
    for section, cls in _SECTIONS.items():
        docs = _field_docs(cls)
        for field in dataclasses.fields(cls):
            if dataclasses.is_dataclass(field.type) or field.name in _SECTIONS:
                continue  # a section: its fields are listed under it
            rows.append((f"{section}.{field.name}".lstrip("."), _type_name(field), _default(field), docs.get(field.name, "")))
    return rows


def options_table() -> str:
    """The option rows as the Markdown table of the README."""
    lines = ["| option | type | default | what it does |", "|---|---|---|---|"]
    for key, type_name, default, doc in option_rows():
        lines.append(f"| `{key}` | {type_name} | `{default}` | {doc.replace('|', chr(92) + '|')} |")
    return "\n".join(lines) + "\n"


def options_help() -> str:
    """The option rows as plain text, one line each, for ``--help``."""
    width = max(len(key) for key, *_ in option_rows())
    return "\n".join(f"  {key:<{width}}  {doc} (default: {default})" for key, _, default, doc in option_rows())


def config_groups_help() -> str:
    """``group: choice, choice`` per config group of the running Hydra app (not Hydra's
    own groups)."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    lines = []
    for group in sorted(loader.list_groups("")):
        if group == "hydra":
            continue
        choices = sorted(loader.get_group_options(group))
        if choices:
            lines.append(f"{group}: {', '.join(choices)}")
    return "\n".join(lines)


def register_help_resolvers() -> None:
    """Register the resolvers of Hydra's help template (``conf/config.yaml``):
    ``eval_recorder_options`` (options_help) and ``eval_recorder_groups`` (config_groups_help)."""
    from omegaconf import OmegaConf

    # Hydra fills its help template with string.Template: a literal "$" is "$$".
    if not OmegaConf.has_resolver("eval_recorder_options"):
        OmegaConf.register_new_resolver("eval_recorder_options", lambda: options_help().replace("$", "$$"))
    if not OmegaConf.has_resolver("eval_recorder_groups"):
        OmegaConf.register_new_resolver("eval_recorder_groups", lambda: config_groups_help().replace("$", "$$"))


if __name__ == "__main__":
    print(options_table(), end="")
