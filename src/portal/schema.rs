//! The portal's `/Schemas` (RFC 7643 §7): which attributes may be written.

use std::collections::HashMap;

use serde_json::Value as Json;

use crate::mapping::AttrPath;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Mutability {
    ReadWrite,
    Immutable,
    ReadOnly,
    WriteOnly,
}

/// Mutability by lowercased attribute path (`username`, `name.familyname`,
/// `urn:…:user:subunit`). Core-schema attributes are keyed without their URN.
#[derive(Clone, Debug, Default)]
pub struct PortalSchema {
    mutability: HashMap<String, Mutability>,
}

impl PortalSchema {
    /// Builds from the `/Schemas` list (or its `Resources`).
    pub fn from_json(schemas: &Json) -> PortalSchema {
        let mut mutability = HashMap::new();
        for schema in schemas.as_array().into_iter().flatten() {
            let Some(id) = schema.get("id").and_then(Json::as_str) else {
                continue;
            };
            let prefix = if id.eq_ignore_ascii_case(super::USER_SCHEMA)
                || !id.to_ascii_lowercase().contains(":extension:")
            {
                String::new()
            } else {
                format!("{}:", id.to_ascii_lowercase())
            };
            // Only User-related schemas matter here; Group's `displayName` would clash with
            // User's, so skip the core Group schema.
            if id.ends_with(":Group") && prefix.is_empty() {
                continue;
            }
            for attr in schema
                .get("attributes")
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
            {
                let Some(name) = attr.get("name").and_then(Json::as_str) else {
                    continue;
                };
                let key = format!("{prefix}{}", name.to_ascii_lowercase());
                let m = parse(attr);
                mutability.insert(key.clone(), m);
                for sub in attr
                    .get("subAttributes")
                    .and_then(Json::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(sub_name) = sub.get("name").and_then(Json::as_str) {
                        // A sub-attribute is no more writable than its parent.
                        let sm = strictest(m, parse(sub));
                        mutability.insert(format!("{key}.{}", sub_name.to_ascii_lowercase()), sm);
                    }
                }
            }
        }
        PortalSchema { mutability }
    }

    /// The mutability of a mapped path; unknown attributes are taken as `readWrite` and
    /// left to the portal to refuse.
    pub fn mutability(&self, path: &AttrPath) -> Mutability {
        let key = path.schema_key();
        let parent = match (&path.schema, &path.sub) {
            (Some(s), Some(_)) => format!("{s}:{}", path.attr).to_ascii_lowercase(),
            (None, Some(_)) => path.attr.to_ascii_lowercase(),
            _ => key.clone(),
        };
        self.mutability
            .get(&key)
            .or_else(|| self.mutability.get(&parent))
            .copied()
            .unwrap_or(Mutability::ReadWrite)
    }

    /// True when the portal refuses changes to this attribute after creation.
    pub fn is_fixed(&self, path: &AttrPath) -> bool {
        matches!(
            self.mutability(path),
            Mutability::Immutable | Mutability::ReadOnly
        )
    }
}

fn parse(attr: &Json) -> Mutability {
    match attr.get("mutability").and_then(Json::as_str) {
        Some("immutable") => Mutability::Immutable,
        Some("readOnly") => Mutability::ReadOnly,
        Some("writeOnly") => Mutability::WriteOnly,
        _ => Mutability::ReadWrite,
    }
}

fn strictest(a: Mutability, b: Mutability) -> Mutability {
    use Mutability::*;
    match (a, b) {
        (ReadOnly, _) | (_, ReadOnly) => ReadOnly,
        (Immutable, _) | (_, Immutable) => Immutable,
        (WriteOnly, _) | (_, WriteOnly) => WriteOnly,
        _ => ReadWrite,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn portal_schema() -> PortalSchema {
        let text = include_str!("../../tests/fixtures/portal/schemas.json");
        PortalSchema::from_json(&serde_json::from_str(text).unwrap())
    }

    #[test]
    fn published_portal_schema_fixes_user_name_only() {
        let s = portal_schema();
        assert_eq!(
            s.mutability(&AttrPath::parse("userName").unwrap()),
            Mutability::Immutable
        );
        assert!(s.is_fixed(&AttrPath::parse("userName").unwrap()));
        for writable in [
            "displayName",
            "name.familyName",
            r#"emails[type eq "work"].value"#,
            r#"phoneNumbers[type eq "work"].value"#,
            "preferredLanguage",
            "urn:ietf:params:scim:schemas:extension:faxportal:2.0:User:subUnit",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department",
        ] {
            assert!(
                !s.is_fixed(&AttrPath::parse(writable).unwrap()),
                "{writable}"
            );
        }
        assert_eq!(
            s.mutability(&AttrPath::parse("groups").unwrap()),
            Mutability::ReadOnly
        );
    }
}
