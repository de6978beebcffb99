"""The OpenAPI 3 schema of the server, written from the served models' declared fields: each
model's predict body lists exactly the fields its features read (entity keys, request
inputs, the routing unit, the subject) — required ones required, no others allowed."""

from __future__ import annotations

from typing import Any

from closedloop.serving.predictor import Predictor

_SCALAR = {"type": ["string", "number", "integer", "boolean", "null"]}
_ERROR = {"type": "object", "required": ["error", "code"], "properties": {
    "error": {"type": "string"}, "code": {"type": "string"},
    "field": {"type": ["string", "null"]}, "fix": {"type": ["string", "null"]}}}
_PREDICTION = {"type": "object",
               "required": ["id", "score", "decision", "version", "route", "fallback",
                            "fallback_reason", "missing"],
               "properties": {"id": {"type": "string"}, "score": {"type": "number"},
                              "decision": {"type": "string"}, "version": {"type": "integer"},
                              "route": {"type": "string"}, "fallback": {"type": "boolean"},
                              "fallback_reason": {"type": ["string", "null"]},
                              "missing": {"type": "object", "additionalProperties": {
                                  "type": "string", "enum": ["no_record", "no_value"]}}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": "the request was refused; the body says why",
                     "content": {"application/json": {"schema": {"$ref":
                                                                 "#/components/schemas/Error"}}}}
            for c in codes}


def _field(p: Predictor, name: str) -> dict[str, Any]:
    """A field's schema: its declared type (nullable, unless it is required and not an entity
    key), else any scalar."""
    kind = p.types.get(name)
    if kind is None:
        return _SCALAR
    return {"type": kind if name in p.required and name not in p.nullable else [kind, "null"]}


def openapi(predictors: dict[str, Predictor]) -> dict[str, Any]:
    """The schema of every route, one predict path per served model."""
    paths: dict[str, Any] = {}
    for name, p in predictors.items():
        instance = {"type": "object", "additionalProperties": False,
                    "required": list(p.required),
                    "properties": {f: _field(p, f) for f in sorted(p.fields)}}
        paths[f"/v1/models/{name}:predict"] = {"post": {
            "summary": f"Score instances with model {name}",
            "operationId": f"predict_{name}",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False, "required": ["instances"],
                "properties": {"instances": {"type": "array", "minItems": 1,
                                             "maxItems": p.serving.max_instances,
                                             "items": instance}}}}}},
            "responses": {"200": {"description": "the predictions, in instance order",
                                  "content": {"application/json": {"schema": {
                                      "type": "object", "required": ["model", "predictions"],
                                      "properties": {"model": {"type": "string"},
                                                     "predictions": {"type": "array",
                                                                     "items": _PREDICTION}}}}}},
                          **_errors(400, 404, 413, 422, 503)}}}
        paths[f"/v1/models/{name}/scores/{{key}}"] = {"get": {
            "summary": f"The batch score of one entity of model {name}",
            "operationId": f"score_{name}",
            "parameters": [{"name": "key", "in": "path", "required": True,
                            "schema": {"type": "string", "minLength": 1}}],
            "responses": {"200": {"description": "the stored score", "content": {
                "application/json": {"schema": {"type": "object", "required": [
                    "model", "key", "score", "version", "as_of", "scored_at"]}}}},
                **_errors(404)}}}
    plain = {"description": "ok", "content": {"application/json": {"schema": {
        "type": "object"}}}}
    for route, summary in (("/healthz", "alive"), ("/readyz", "every model loaded"),
                           ("/v1/models", "the served models and their versions")):
        paths[route] = {"get": {"summary": summary, "operationId": route.strip("/")
                                .replace("/", "_"), "responses": {"200": plain,
                                                                  **_errors(503)}}}
    paths["/metrics"] = {"get": {"summary": "Prometheus metrics", "operationId": "metrics",
                                 "responses": {"200": {"description": "exposition text",
                                                       "content": {"text/plain": {}}}}}}
    return {"openapi": "3.1.0",
            "info": {"title": "closedloop serving", "version": "1"},
            "paths": paths, "components": {"schemas": {"Error": _ERROR}}}
