//! The OpenAPI 3.1 document of the API, served at `GET /v1/openapi.json`.

use serde_json::{json, Value};

fn error() -> Value {
    json!({ "description": "An error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

fn ok(description: &str, schema: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

fn images() -> Value {
    json!({ "required": true, "content": { "multipart/form-data": { "schema": {
        "type": "object", "required": ["image"],
        "properties": { "image": { "type": "array", "items": { "type": "string", "format": "binary" },
            "description": "One to 64 PNG or JPEG images (up to 4096 pixels a side), one part each, all named `image`." } } } } } })
}

fn json_body(schema: &str) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

/// The document.
pub fn document() -> Value {
    let e = error();
    let reader = json!([{ "bearer": [] }]);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Perennial",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A lifelong few-shot learner: teach classes from a few images at any time, predict at once, and it flags what it has not seen. Writes need a writer token; reads a reader token unless the server runs with --public-read."
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "string" } } },
                "Taught": { "type": "object", "required": ["class", "added", "examples"], "properties": {
                    "class": { "type": "string" }, "added": { "type": "integer" }, "examples": { "type": "integer" } } },
                "Ranked": { "type": "object", "required": ["label", "probability"], "properties": {
                    "label": { "type": "string" }, "probability": { "type": "number" } } },
                "Prediction": { "type": "object", "required": ["id", "label", "probability", "unknown", "unknown_score", "top"], "properties": {
                    "id": { "type": "string", "description": "Names the prediction for /v1/feedback." },
                    "label": { "type": "string" }, "probability": { "type": "number" },
                    "unknown": { "type": "boolean" }, "unknown_score": { "type": "number", "description": "Above 1: unknown." },
                    "top": { "type": "array", "items": { "$ref": "#/components/schemas/Ranked" } } } },
                "Predictions": { "type": "object", "required": ["predictions"], "properties": {
                    "predictions": { "type": "array", "items": { "$ref": "#/components/schemas/Prediction" } } } },
                "Classes": { "type": "object", "required": ["classes"], "properties": { "classes": { "type": "array", "items": {
                    "type": "object", "required": ["label", "examples"], "properties": { "label": { "type": "string" }, "examples": { "type": "integer" } } } } } },
                "Forgotten": { "type": "object", "required": ["class", "forgotten"], "properties": { "class": { "type": "string" }, "forgotten": { "type": "integer" } } },
                "Feedback": { "type": "object", "required": ["id", "label"], "properties": { "id": { "type": "string" }, "label": { "type": "string" } } },
                "Label": { "type": "object", "required": ["label"], "properties": { "label": { "type": "string" } } },
                "Unknown": { "type": "object", "required": ["unknown"], "properties": { "unknown": { "type": "array", "items": {
                    "type": "object", "required": ["id", "prediction", "label", "probability", "unknown_score", "at"], "properties": {
                        "id": { "type": "integer" }, "prediction": { "type": "string" }, "label": { "type": "string" },
                        "probability": { "type": "number" }, "unknown_score": { "type": "number" }, "at": { "type": "string" } } } } } },
                "Status": { "type": "object", "required": ["version", "classes", "examples", "queue", "consolidation"], "properties": {
                    "version": { "type": "integer" }, "classes": { "type": "integer" }, "examples": { "type": "integer" },
                    "queue": { "type": "integer" }, "queue_capacity": { "type": "integer" }, "uptime_seconds": { "type": "number" },
                    "consolidation": { "type": "object" }, "recent": { "type": "object" }, "versions": { "type": "array", "items": { "type": "object" } } } },
                "Started": { "type": "object", "required": ["started", "version"], "properties": { "started": { "type": "boolean" }, "version": { "type": "integer" } } },
                "Rollback": { "type": "object", "properties": { "version": { "type": "integer", "description": "Default: the kept version before the current one." } } },
                "Version": { "type": "object", "required": ["version"], "properties": { "version": { "type": "integer" } } }
            }
        },
        "paths": {
            "/v1/classes/{label}/examples": { "post": {
                "summary": "Teach examples of a class (new or known); answered once they are durable.",
                "security": [{ "bearer": [] }],
                "parameters": [{ "name": "label", "in": "path", "required": true, "schema": { "type": "string", "minLength": 1, "maxLength": 200 } }],
                "requestBody": images(),
                "responses": { "201": ok("Taught", "Taught"), "400": e, "401": e, "403": e, "413": e, "503": e } } },
            "/v1/predict": { "post": {
                "summary": "Predict each image: label, probability, top classes, unknown.",
                "security": reader, "requestBody": images(),
                "responses": { "200": ok("One prediction per image, in order", "Predictions"), "400": e, "401": e, "409": e, "413": e, "503": e } } },
            "/v1/classes": { "get": { "summary": "The classes known.", "security": reader, "responses": { "200": ok("Classes", "Classes"), "401": e } } },
            "/v1/classes/{label}": { "delete": {
                "summary": "Forget a class and its examples.", "security": [{ "bearer": [] }],
                "parameters": [{ "name": "label", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": { "200": ok("Forgotten", "Forgotten"), "401": e, "403": e, "404": e } } },
            "/v1/feedback": { "post": {
                "summary": "A recent prediction's true label: the learner learns it.", "security": [{ "bearer": [] }],
                "requestBody": json_body("Feedback"),
                "responses": { "201": ok("Taught", "Taught"), "400": e, "401": e, "403": e, "404": e } } },
            "/v1/unknown": { "get": {
                "summary": "Inputs flagged unknown, oldest first, for a person to label.", "security": reader,
                "parameters": [{ "name": "limit", "in": "query", "schema": { "type": "integer", "maximum": 1000 } }],
                "responses": { "200": ok("The queue", "Unknown"), "401": e } } },
            "/v1/unknown/{id}/label": { "post": {
                "summary": "Label an input of the unknown queue: the learner learns it.", "security": [{ "bearer": [] }],
                "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "integer" } }],
                "requestBody": json_body("Label"),
                "responses": { "201": ok("Taught", "Taught"), "400": e, "401": e, "403": e, "404": e } } },
            "/v1/status": { "get": { "summary": "Version, classes, examples, consolidations, queue.", "security": reader,
                "responses": { "200": ok("Status", "Status"), "401": e } } },
            "/v1/consolidate": { "post": { "summary": "Start a consolidation in the background now.", "security": [{ "bearer": [] }],
                "responses": { "202": ok("Started", "Started"), "401": e, "403": e, "409": e } } },
            "/v1/rollback": { "post": { "summary": "Make an earlier kept version current.", "security": [{ "bearer": [] }],
                "requestBody": { "required": false, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Rollback" } } } },
                "responses": { "200": ok("The version now current", "Version"), "401": e, "403": e, "409": e } } },
            "/healthz": { "get": { "summary": "Liveness.", "responses": { "200": { "description": "ok", "content": { "text/plain": {} } } } } },
            "/metrics": { "get": { "summary": "Prometheus text metrics.", "responses": { "200": { "description": "metrics", "content": { "text/plain": {} } } } } },
            "/v1/openapi.json": { "get": { "summary": "This document.", "responses": { "200": { "description": "OpenAPI 3.1", "content": { "application/json": {} } } } } }
        }
    })
}
