//! A small JSON Schema (draft 2020-12) checker for the tests of `docs/report.schema.json`:
//! the keywords that schema uses — `$ref` to a pointer in the same file (`#/$defs/…`), `type` (one or a list),
//! `properties`, `required`, `additionalProperties`, `items`, `enum`, `const`, `minimum`.
//! A keyword it does not know fails the check, so the schema cannot outgrow it unseen.
//! Shared by the unit tests (src/report/tests.rs, which include this file) and the
//! integration tests.

use serde_json::Value as Json;

/// Every way `value` breaks `schema`, one line each (empty when it is valid).
pub fn validate(schema: &Json, value: &Json) -> Vec<String> {
    let mut errors = Vec::new();
    check(schema, schema, value, "$", &mut errors);
    errors
}

const KNOWN: &[&str] = &[
    "$schema",
    "$id",
    "$ref",
    "$defs",
    "$comment",
    "title",
    "description",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "minimum",
    "examples",
];

fn check(root: &Json, schema: &Json, value: &Json, at: &str, errors: &mut Vec<String>) {
    let Some(s) = schema.as_object() else {
        if schema == &Json::Bool(false) {
            errors.push(format!("{at}: not allowed here"));
        }
        return;
    };
    for key in s.keys() {
        if !KNOWN.contains(&key.as_str()) {
            errors.push(format!("{at}: the checker does not know keyword {key}"));
        }
    }
    if let Some(r) = s.get("$ref").and_then(Json::as_str) {
        let target = r.strip_prefix("#/").and_then(|pointer| {
            pointer
                .split('/')
                .try_fold(root, |node, step| node.get(step))
        });
        match target {
            Some(target) => check(root, target, value, at, errors),
            None => errors.push(format!("{at}: unresolved $ref {r}")),
        }
    }
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Json::String(one) => vec![one.as_str()],
            Json::Array(many) => many.iter().filter_map(Json::as_str).collect(),
            _ => vec![],
        };
        if !types.iter().any(|t| is_type(value, t)) {
            errors.push(format!(
                "{at}: {value} is not of type {}",
                types.join(" or ")
            ));
            return;
        }
    }
    if let Some(options) = s.get("enum").and_then(Json::as_array) {
        if !options.contains(value) {
            errors.push(format!("{at}: {value} is not one of {options:?}"));
        }
    }
    if let Some(c) = s.get("const") {
        if c != value {
            errors.push(format!("{at}: {value} is not {c}"));
        }
    }
    if let (Some(min), Some(n)) = (s.get("minimum").and_then(Json::as_f64), value.as_f64()) {
        if n < min {
            errors.push(format!("{at}: {n} is less than {min}"));
        }
    }
    if let Some(object) = value.as_object() {
        let properties = s.get("properties").and_then(Json::as_object);
        if let Some(required) = s.get("required").and_then(Json::as_array) {
            for name in required.iter().filter_map(Json::as_str) {
                if !object.contains_key(name) {
                    errors.push(format!("{at}: required property {name} is missing"));
                }
            }
        }
        for (name, item) in object {
            let here = format!("{at}.{name}");
            match properties.and_then(|p| p.get(name)) {
                Some(sub) => check(root, sub, item, &here, errors),
                None => match s.get("additionalProperties") {
                    Some(Json::Bool(false)) => {
                        errors.push(format!("{here}: not in the schema"));
                    }
                    Some(sub @ Json::Object(_)) => check(root, sub, item, &here, errors),
                    _ => {}
                },
            }
        }
    }
    if let (Some(items), Some(array)) = (s.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            check(root, items, item, &format!("{at}[{i}]"), errors);
        }
    }
}

fn is_type(value: &Json, t: &str) -> bool {
    match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    }
}
