"""JSON Schema's `integer` is a number with no fraction: `3.0` is one. The request models are strict
(`"3"` and `true` are not step counts), and pydantic's strict int refuses `3.0`; `WholeNumbers` takes
such a float as the integer it is, for int fields only, before validation. Found by the fuzzer's valid
data (`"steps": 3.0`, `"keepDays": 13328.0`)."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, model_validator

EXACT = 2 ** 53  # past it a float no longer names one integer


def _bare(annotation: Any) -> Any:
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation


def takes_int(annotation: Any) -> bool:
    annotation = _bare(annotation)
    if annotation is int:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [_bare(a) for a in typing.get_args(annotation)]
        return int in args and float not in args
    return False


class WholeNumbers(BaseModel):
    @model_validator(mode="before")
    @classmethod
    def _whole_numbers(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        names = {}
        for name, info in cls.model_fields.items():
            if takes_int(info.annotation):
                names[name] = name
                if info.alias:
                    names[info.alias] = name
                for choice in getattr(info.validation_alias, "choices", ()) or ():
                    if isinstance(choice, str):
                        names[choice] = name
                if cls.model_config.get("alias_generator") is not None:
                    names[cls.model_config["alias_generator"](name)] = name
        fixed = {key: int(value) if (key in names and isinstance(value, float) and value.is_integer()
                                     and abs(value) <= EXACT) else value for key, value in data.items()}
        return fixed
