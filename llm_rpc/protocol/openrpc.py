"""An OpenRPC 1.x document generated from a MethodTable (the same Structs that validate params)."""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["openrpc_document"]

_REF = "#/components/schemas/{name}"


def openrpc_document(
    table: Any,
    *,
    title: str,
    version: str,
    description: str = "",
    error_codes: dict[str, int] | None = None,
) -> dict[str, Any]:
    methods = sorted(table, key=lambda m: m.name)
    types: list[Any] = []
    for m in methods:
        if m.params_type is not None:
            types.append(m.params_type)
        types.append(type(None) if m.result_type is None else m.result_type)
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    schema_iter = iter(schemas)
    out_methods: list[dict[str, Any]] = []
    codes = error_codes or {}
    for m in methods:
        params: list[dict[str, Any]] = []
        if m.params_type is not None:
            ref = next(schema_iter)
            component = components.get(_component_name(ref), {})
            required = set(component.get("required", []))
            for name, schema in component.get("properties", {}).items():
                params.append({"name": name, "required": name in required, "schema": schema})
        result_schema = next(schema_iter)
        entry: dict[str, Any] = {
            "name": m.name,
            "summary": m.summary,
            "paramStructure": "by-name",
            "params": params,
        }
        if m.description:
            entry["description"] = m.description
        if m.notification:
            entry["x-notification"] = True
        else:
            entry["result"] = {"name": "result", "schema": result_schema}
        if m.errors:
            entry["errors"] = [{"code": codes[t], "message": t, "data": {"type": t}} for t in m.errors if t in codes]
        out_methods.append(entry)
    return {
        "openrpc": "1.3.2",
        "info": {"title": title, "version": version, "description": description},
        "methods": out_methods,
        "components": {"schemas": dict(sorted(components.items()))},
    }


def _component_name(schema: dict[str, Any]) -> str:
    ref = schema.get("$ref", "")
    return str(ref).rsplit("/", 1)[-1]
