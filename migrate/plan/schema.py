"""The published JSON Schema of a plan as a person writes it (`migrate schema`), for editors and CI.

It describes the YAML before loading, not the parsed model: a duration is `30s` or a number, a table a name or a
mapping, and wherever the loader fills in `${VAR}` a `${...}` string may stand for a number, a boolean or a
choice. The model's own fields, defaults and docstrings give the rest, so the schema follows the model.
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from migrate.plan.model import INTERPOLATED_JSON_SCHEMA, Plan

DRAFT = "https://json-schema.org/draft/2020-12/schema"


class _WrittenPlanSchema(GenerateJsonSchema):
    """Pydantic's validation-mode schema, where a scalar a `${VAR}` string can become also accepts that string.

    The loader interpolates every string value, and pydantic (lax) then reads "5000" as an integer, "true" as a
    boolean; a plain unconstrained string needs nothing more. A constant like `version: 1` is never a string."""

    def _or_interpolated(self, schema: JsonSchemaValue) -> JsonSchemaValue:
        return self.get_flattened_anyof([schema, INTERPOLATED_JSON_SCHEMA])

    def int_schema(self, schema: core_schema.IntSchema) -> JsonSchemaValue:
        return self._or_interpolated(super().int_schema(schema))

    def float_schema(self, schema: core_schema.FloatSchema) -> JsonSchemaValue:
        return self._or_interpolated(super().float_schema(schema))

    def bool_schema(self, schema: core_schema.BoolSchema) -> JsonSchemaValue:
        return self._or_interpolated(super().bool_schema(schema))

    def str_schema(self, schema: core_schema.StringSchema) -> JsonSchemaValue:
        written = super().str_schema(schema)
        return self._or_interpolated(written) if set(written) != {"type"} else written

    def literal_schema(self, schema: core_schema.LiteralSchema) -> JsonSchemaValue:
        written = super().literal_schema(schema)
        return self._or_interpolated(written) if all(isinstance(v, str) for v in schema["expected"]) else written


def plan_json_schema() -> dict[str, Any]:
    schema = Plan.model_json_schema(mode="validation", schema_generator=_WrittenPlanSchema)
    return {"$schema": DRAFT, **schema, "title": "migrate plan (version 1)"}
