"""The OpenAPI 3.1 document, generated from the mounted endpoints and their pydantic models."""

from __future__ import annotations

import re
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from taskyard import __version__
from taskyard.http.routing import Endpoint
from taskyard_sdk.protocol import ErrorEnvelope

_REF_TEMPLATE = "#/components/schemas/{model}"


def _path_schema(name: str, pattern: str | None) -> dict[str, Any]:
    if name.endswith("_id"):  # see taskyard.http.routing: such parameters are UUIDs
        return {"type": "string", "format": "uuid"}
    if pattern is not None:
        return {"type": "string", "pattern": pattern}
    return {"type": "string"}


def build_openapi(endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    # Bodies and responses in one pass: a model read and written differently (TaskOptions: its
    # labels are sent bare or whole, and always written whole) gets one component for each way.
    inputs: list[tuple[tuple[int, str], JsonSchemaMode, TypeAdapter[Any]]] = [
        ((-1, "error"), "serialization", TypeAdapter(ErrorEnvelope))  # what every error answers
    ]
    for index, endpoint in enumerate(endpoints):
        if endpoint.body is not None:
            inputs.append(((index, "body"), "validation", TypeAdapter(endpoint.body)))
        if endpoint.response is not None:
            inputs.append(((index, "response"), "serialization", TypeAdapter(endpoint.response)))
    schemas, definitions = TypeAdapter.json_schemas(inputs, ref_template=_REF_TEMPLATE)
    components: dict[str, Any] = dict(definitions.get("$defs", {}))
    paths: dict[str, dict[str, Any]] = {}

    def query_schema_of(model: type[BaseModel]) -> dict[str, Any]:
        """A query model inline (its fields become parameters), what it refers to shared."""
        schema = model.model_json_schema(ref_template=_REF_TEMPLATE, mode="validation")
        components.update(schema.pop("$defs", {}))
        return schema

    for index, endpoint in enumerate(endpoints):
        operation: dict[str, Any] = {"summary": endpoint.summary, "responses": {}}
        if endpoint.description:
            operation["description"] = endpoint.description
        if endpoint.tags:
            operation["tags"] = list(endpoint.tags)
        if endpoint.roles is not None:
            operation["security"] = [{"bearer": []}]
            operation["x-roles"] = sorted(endpoint.roles)
        patterns = {name: pattern.pattern for name, pattern in endpoint.params}
        parameters = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": _path_schema(name, patterns.get(name)),
            }
            for name in re.findall(r"\{(\w+)[^}]*\}", endpoint.path)
        ]
        if endpoint.query is not None:
            query_schema = query_schema_of(endpoint.query)
            required = set(query_schema.get("required", []))
            parameters += [
                {"name": name, "in": "query", "required": name in required, "schema": prop}
                for name, prop in query_schema.get("properties", {}).items()
            ]
        if parameters:
            operation["parameters"] = parameters
        if endpoint.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": schemas[((index, "body"), "validation")]}
                },
            }
        content = None
        if endpoint.response is not None:
            content = {
                "application/json": {"schema": schemas[((index, "response"), "serialization")]}
            }
        statuses = {endpoint.status: HTTPStatus(endpoint.status).phrase, **endpoint.other_statuses}
        for status, meaning in sorted(statuses.items()):
            answer: dict[str, Any] = {"description": meaning}
            if content is not None and status != 204:
                answer["content"] = content
            operation["responses"][str(status)] = answer
        operation["responses"]["default"] = {
            "description": "Error",
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}
            },
        }
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
