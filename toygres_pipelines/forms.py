"""What derives from a request's one field list (`records.requests`) besides the launchpad Config
(a subclass of the record and `dg.Config`): the CLI's arguments and the run config a request
stands for. Names, types, defaults and descriptions all come from the model.
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Iterable
from typing import Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from records.requests import RequestFields

FieldsT = TypeVar("FieldsT", bound=RequestFields)


def cli_flag(field: str, info: FieldInfo) -> str:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    return str(extra.get("cli_flag") or "--" + field.replace("_", "-"))


def _scalar(annotation: Any) -> Any:
    """str | None -> str; the CLI passes None by leaving the option out."""
    if get_origin(annotation) in (Union, types.UnionType):
        kinds = [arg for arg in get_args(annotation) if arg is not type(None)]
        return kinds[0] if len(kinds) == 1 else str
    return annotation


def add_cli_arguments(
    parser: argparse.ArgumentParser, fields: type[RequestFields], *, optional: Iterable[str] = ()
) -> None:
    """One option per field, `--field-name` (or the field's `cli_flag`), help from its description.
    A field without a default is required unless named in `optional` (the command fills it in)."""
    may_omit = set(optional)
    for field, info in fields.model_fields.items():
        kind = _scalar(info.annotation)
        flag = cli_flag(field, info)
        help_text = info.description or ""
        if kind is bool:
            parser.add_argument(flag, dest=field, action="store_true", help=help_text)
            continue
        if get_origin(kind) is list:  # one option per item: --database a --database b
            parser.add_argument(flag, dest=field, action="append", help=help_text + " (repeat the option for each)")
            continue
        required = info.is_required() and field not in may_omit
        default = None if info.is_required() else info.get_default()
        if default not in (None, ""):
            help_text += f" (default: {default})"
        parser.add_argument(
            flag,
            dest=field,
            type=kind if kind in (int, float) else str,
            required=required,
            default=default,
            help=help_text,
        )


def fields_from_cli(args: argparse.Namespace, fields: type[FieldsT], **filled: Any) -> FieldsT:
    """The request the CLI arguments describe; `filled` supplies what the command computed."""
    values = {field: getattr(args, field) for field in fields.model_fields if hasattr(args, field)}
    values.update(filled)
    return fields.model_validate(values)


def run_config_values(request: BaseModel, fields: type[RequestFields], **overrides: Any) -> dict[str, Any]:
    """The launchpad config a request stands for (sensors and schedules launch runs with it)."""
    values = fields.of(request).model_dump(mode="json", exclude_none=True)
    return {**values, **overrides}
