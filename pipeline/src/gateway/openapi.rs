//! The OpenAPI document: `openapi.base.json` (routes, answers) plus the
//! request schemas taken from the topic's JSON Schema, so the HTTP contract
//! and the topic contract are one. `docs/openapi.json` is this document; a
//! test keeps it current (`notiflow gateway openapi > docs/openapi.json`).

use serde_json::Value;

const BASE: &str = include_str!("openapi.base.json");

pub fn document() -> Value {
    let mut doc: Value = serde_json::from_str(BASE).expect("openapi.base.json is JSON");
    let schema: Value = serde_json::from_str(crate::contract::REQUEST_SCHEMA).expect("the request schema is JSON");
    let schemas = doc["components"]["schemas"].as_object_mut().expect("components.schemas");
    let defs = schema["$defs"].as_object().expect("the request schema has $defs");
    for (name, def) in defs {
        let mut def = def.clone();
        rewrite_refs(&mut def);
        schemas.insert(format!("request_{name}"), def);
    }
    // The HTTP forms: the API key names the tenant, the route names the type.
    for (name, def) in [("SendRequest", "send"), ("RecallRequest", "recall")] {
        let mut request = schemas[&format!("request_{def}")].clone();
        if let Some(required) = request["required"].as_array_mut() {
            required.retain(|field| field != "tenant" && field != "type");
        }
        schemas.insert(name.to_string(), request);
    }
    doc
}

/// `#/$defs/x` (the topic schema's) -> `#/components/schemas/request_x`.
fn rewrite_refs(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get_mut("$ref")
                && let Some(name) = target.strip_prefix("#/$defs/")
            {
                *target = format!("#/components/schemas/request_{name}");
            }
            map.values_mut().for_each(rewrite_refs);
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repo_copy_is_the_served_document() {
        let served = serde_json::to_string_pretty(&document()).unwrap() + "\n";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
        let in_repo = std::fs::read_to_string(path).unwrap_or_default();
        assert!(in_repo == served, "docs/openapi.json is stale: run `cargo run -p notiflow -- gateway openapi > docs/openapi.json`");
    }

    #[test]
    fn request_schemas_come_from_the_topic_contract() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let send = &schemas["SendRequest"];
        assert_eq!(
            send["properties"]["template"],
            serde_json::from_str::<Value>(crate::contract::REQUEST_SCHEMA).unwrap()["$defs"]["send"]["properties"]["template"]
        );
        assert!(!send["required"].as_array().unwrap().contains(&Value::from("tenant")));
        assert_eq!(send["properties"]["recipients"]["items"]["$ref"], "#/components/schemas/request_recipient");
        let text = doc.to_string();
        assert!(!text.contains("#/$defs/"), "every reference resolves inside the document");
    }
}
