"""The published JSON Schema of the JSON report, derived from the same dataclasses the report is built from,
so the schema and the report cannot drift apart."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from migrate.reports.build import ReportData

REPORT_VERSION = 1


def report_json_schema() -> dict[str, Any]:
    schema = TypeAdapter(ReportData).json_schema(mode="serialization")
    schema["properties"]["clean"] = {"type": "boolean", "description": "every item verified clean and every "
                                     "gate passing"}
    schema["properties"]["report_version"] = {"const": REPORT_VERSION}
    schema["required"] = sorted({*schema.get("required", []), "clean", "report_version", "phase", "headline"})
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"migrate JSON report (version {REPORT_VERSION})"
    return schema
