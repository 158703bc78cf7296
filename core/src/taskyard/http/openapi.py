"""The OpenAPI 3.1 document, generated from the mounted endpoints and their pydantic models."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import TypeAdapter

from taskyard import __version__
from taskyard.http.routing import Endpoint

_REF_TEMPLATE = "#/components/schemas/{model}"
_ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "object", "properties": {
        "code": {"type": "string"}, "message": {"type": "string"},
        "details": {"type": "array", "items": {"type": "object"}},
    }, "required": ["code", "message"]}},
    "required": ["error"],
}


def build_openapi(endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    components: dict[str, Any] = {"Error": _ERROR_SCHEMA}
    paths: dict[str, dict[str, Any]] = {}

    def schema_of(annotation: Any, mode: str) -> dict[str, Any]:
        schema = TypeAdapter(annotation).json_schema(ref_template=_REF_TEMPLATE, mode=mode)  # type: ignore[arg-type]
        components.update(schema.pop("$defs", {}))
        return schema

    for endpoint in endpoints:
        operation: dict[str, Any] = {"summary": endpoint.summary, "responses": {}}
        if endpoint.description:
            operation["description"] = endpoint.description
        if endpoint.tags:
            operation["tags"] = list(endpoint.tags)
        if endpoint.roles is not None:
            operation["security"] = [{"bearer": []}]
            operation["x-roles"] = sorted(endpoint.roles)
        parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                      for name in re.findall(r"\{(\w+)[^}]*\}", endpoint.path)]
        if endpoint.query is not None:
            query_schema = schema_of(endpoint.query, "validation")
            required = set(query_schema.get("required", []))
            parameters += [{"name": name, "in": "query", "required": name in required,
                            "schema": prop}
                           for name, prop in query_schema.get("properties", {}).items()]
        if parameters:
            operation["parameters"] = parameters
        if endpoint.body is not None:
            operation["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": schema_of(endpoint.body, "validation")}}}
        success: dict[str, Any] = {"description": "OK"}
        if endpoint.response is not None:
            success["content"] = {"application/json": {
                "schema": schema_of(endpoint.response, "serialization")}}
        operation["responses"][str(endpoint.status)] = success
        operation["responses"]["default"] = {"description": "Error", "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        path = re.sub(r"\{(\w+)[^}]*\}", r"{\1}", endpoint.path)
        paths.setdefault(path, {})[endpoint.method.lower()] = operation

    return {
        "openapi": "3.1.0",
        "info": {"title": "Taskyard API", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
