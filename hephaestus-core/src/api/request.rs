//! Request bodies and query strings of the control API, checked field by field so that
//! every 400 names the field at fault.

use serde_json::{Map, Value};

use super::failure::Failure;
use super::{DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT};
use crate::edit::Edit;
use crate::evolution::EvolutionKind;
use crate::history::ListFilter;
use crate::import::ImportSpec;
use crate::modpath::ModulePath;
use crate::{Operation, Project};

/// The longest `module_name` (and `module` query parameter) accepted, in bytes: far
/// beyond any real module path, refused before it is parsed or echoed.
pub(crate) const MAX_MODULE_NAME: usize = 512;

/// How a write request wants to be applied.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WriteRequest {
    pub op: Operation,
    /// Verify with the configured verification (else skip it).
    pub verify: bool,
    /// Record the result in the history.
    pub backup: bool,
    /// Only compute the diff.
    pub dry_run: bool,
}

/// `POST /hot-reload/self-modify`: `{module_name, new_code, backup_enabled = true,
/// mode = "merge", items, verify = true, verbatim = false, dry_run = false}`.
pub(crate) fn self_modify(body: &[u8]) -> Result<WriteRequest, Failure> {
    let mut f = Fields::parse(
        body,
        &[
            "module_name",
            "new_code",
            "backup_enabled",
            "mode",
            "items",
            "verify",
            "verbatim",
            "dry_run",
        ],
    )?;
    let module = f.module_name()?;
    let mode = f.opt_str("mode")?.unwrap_or("merge").to_owned();
    let edit = match mode.as_str() {
        "merge" | "replace" => {
            if f.has("items") {
                return Err(Failure::field(
                    "invalid-field",
                    "items",
                    "`items` is only used with \"mode\": \"remove\"",
                ));
            }
            let code = f.take_str("new_code")?;
            let edit = if mode == "merge" {
                Edit::merge(code)
            } else {
                Edit::replace(code)
            };
            if f.opt_bool("verbatim")?.unwrap_or(false) {
                edit.verbatim()
            } else {
                edit
            }
        }
        "remove" => {
            if f.has("new_code") {
                return Err(Failure::field(
                    "invalid-field",
                    "new_code",
                    "\"mode\": \"remove\" takes `items` (item keys such as \"fn helper\"), not `new_code`",
                ));
            }
            let items = f.req_str_list("items")?;
            if items.is_empty() {
                return Err(Failure::field(
                    "invalid-field",
                    "items",
                    "`items` is empty: name at least one item to remove, e.g. [\"fn helper\"]",
                ));
            }
            Edit::remove(items)
        }
        other => {
            return Err(Failure::field(
                "invalid-field",
                "mode",
                format!("`mode` is {other:?}; use \"merge\" (default), \"replace\" or \"remove\""),
            ));
        }
    };
    Ok(WriteRequest {
        op: Operation::SelfModify { module, edit },
        verify: f.opt_bool("verify")?.unwrap_or(true),
        backup: f.opt_bool("backup_enabled")?.unwrap_or(true),
        dry_run: f.opt_bool("dry_run")?.unwrap_or(false),
    })
}

/// `POST /hot-reload/dynamic-import`: `{code, module_name, run, private = false,
/// backup_enabled = true, verify = true, dry_run = false}`.
pub(crate) fn dynamic_import(body: &[u8]) -> Result<WriteRequest, Failure> {
    let mut f = Fields::parse(
        body,
        &[
            "code",
            "module_name",
            "run",
            "private",
            "backup_enabled",
            "verify",
            "dry_run",
        ],
    )?;
    let module = f.module_name()?;
    let code = f.take_str("code")?;
    let run = f.opt_str("run")?.map(str::to_owned);
    let dry_run = f.opt_bool("dry_run")?.unwrap_or(false);
    Ok(WriteRequest {
        op: Operation::Import(ImportSpec {
            module,
            code,
            public: !f.opt_bool("private")?.unwrap_or(false),
            run,
        }),
        verify: f.opt_bool("verify")?.unwrap_or(true),
        backup: f.opt_bool("backup_enabled")?.unwrap_or(true),
        dry_run,
    })
}

/// `GET /hot-reload/evolution-history?limit=N&kind=K&module=M`.
pub(crate) fn history(pairs: &[(String, String)]) -> Result<ListFilter, Failure> {
    let mut filter = ListFilter {
        limit: Some(DEFAULT_HISTORY_LIMIT),
        ..ListFilter::default()
    };
    let mut seen: Vec<&str> = Vec::new();
    for (key, value) in pairs {
        if seen.contains(&key.as_str()) {
            return Err(Failure::field(
                "invalid-field",
                key,
                format!("`{key}` is given twice"),
            ));
        }
        seen.push(key);
        match key.as_str() {
            "limit" => {
                let n: usize = value.parse().map_err(|_| {
                    Failure::field(
                        "invalid-field",
                        "limit",
                        format!(
                            "`limit` is {value:?}; give a number from 1 to {MAX_HISTORY_LIMIT}"
                        ),
                    )
                })?;
                if !(1..=MAX_HISTORY_LIMIT).contains(&n) {
                    return Err(Failure::field(
                        "invalid-field",
                        "limit",
                        format!("`limit` is {n}; give a number from 1 to {MAX_HISTORY_LIMIT}"),
                    ));
                }
                filter.limit = Some(n);
            }
            "kind" => {
                let kind: EvolutionKind = value
                    .parse()
                    .map_err(|e| Failure::field("invalid-field", "kind", format!("`kind`: {e}")))?;
                filter.kind = Some(kind);
            }
            "module" => {
                check_module_text("module", value)?;
                Project::parse_module_path(value)
                    .map_err(|e| Failure::field("invalid-module", "module", e.to_string()))?;
                filter.module = Some(value.clone());
            }
            other => {
                return Err(Failure::field(
                    "unknown-field",
                    other,
                    format!("unknown query parameter `{other}`; use limit, kind or module"),
                ));
            }
        }
    }
    Ok(filter)
}

/// A JSON object body whose fields are checked one by one.
struct Fields {
    map: Map<String, Value>,
}

impl Fields {
    /// Parse `body` as a JSON object with only `allowed` fields.
    fn parse(body: &[u8], allowed: &[&str]) -> Result<Fields, Failure> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(Failure::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid-json",
                crate::ErrorCategory::BadInput,
                format!(
                    "the request body is empty; send a JSON object with {}",
                    allowed
                        .first()
                        .map_or(String::new(), |f| format!("`{f}`, …"))
                ),
            ));
        }
        let invalid_json = |e: serde_json::Error| {
            let mut f = Failure::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid-json",
                crate::ErrorCategory::BadInput,
                format!("the request body is not valid JSON: {e}"),
            );
            f.line = Some(e.line());
            f.column = Some(e.column());
            f
        };
        let value: Value = serde_json::from_slice(body).map_err(invalid_json)?;
        if value.is_object() {
            // A `Value` keeps the last of duplicate keys: look at the keys once more.
            serde_json::from_slice::<UniqueKeys>(body).map_err(invalid_json)?;
        }
        let Value::Object(map) = value else {
            return Err(Failure::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid-json",
                crate::ErrorCategory::BadInput,
                format!(
                    "the request body must be a JSON object, not {}",
                    type_name(&value)
                ),
            ));
        };
        if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(Failure::field(
                "unknown-field",
                unknown,
                format!(
                    "unknown field `{unknown}`; the fields are {}",
                    allowed.join(", ")
                ),
            ));
        }
        Ok(Fields { map })
    }

    /// Present and not null.
    fn has(&self, name: &str) -> bool {
        self.map.get(name).is_some_and(|v| !v.is_null())
    }

    fn req_str(&self, name: &str) -> Result<&str, Failure> {
        match self.map.get(name) {
            None => Err(Failure::field(
                "missing-field",
                name,
                format!("missing field `{name}` (a string)"),
            )),
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(wrong_type(name, "a string", other)),
        }
    }

    /// [`Self::req_str`], moving the string out (a code field can be 1 MiB: no copy).
    fn take_str(&mut self, name: &str) -> Result<String, Failure> {
        match self.map.get_mut(name) {
            Some(Value::String(s)) => Ok(std::mem::take(s)),
            _ => self.req_str(name).map(str::to_owned),
        }
    }

    fn opt_str(&self, name: &str) -> Result<Option<&str>, Failure> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(wrong_type(name, "a string", other)),
        }
    }

    /// Absent, or `true`/`false` (`null` is refused: it would silently mean the
    /// default).
    fn opt_bool(&self, name: &str) -> Result<Option<bool>, Failure> {
        match self.map.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(wrong_type(name, "true or false", other)),
        }
    }

    fn req_str_list(&self, name: &str) -> Result<Vec<String>, Failure> {
        match self.map.get(name) {
            None => Err(Failure::field(
                "missing-field",
                name,
                format!("missing field `{name}` (an array of strings)"),
            )),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(wrong_type(name, "an array of strings", other)),
                })
                .collect(),
            Some(other) => Err(wrong_type(name, "an array of strings", other)),
        }
    }

    /// `module_name`: a string that parses as a module path (`..`, `/` refused here,
    /// before any lock is taken).
    fn module_name(&self) -> Result<String, Failure> {
        let text = self.req_str("module_name")?;
        check_module_text("module_name", text)?;
        ModulePath::parse(text)
            .map_err(|e| Failure::field("invalid-module", "module_name", e.to_string()))?;
        Ok(text.to_owned())
    }
}

/// A module path's text, before it is parsed (or shown in a message): at most
/// [`MAX_MODULE_NAME`] bytes, no control characters (a trailing newline included).
fn check_module_text(field: &str, text: &str) -> Result<(), Failure> {
    if text.len() > MAX_MODULE_NAME {
        return Err(Failure::field(
            "invalid-module",
            field,
            format!(
                "`{field}` is {} bytes long; a module path has at most {MAX_MODULE_NAME}",
                text.len()
            ),
        ));
    }
    if let Some((i, c)) = text.chars().enumerate().find(|(_, c)| c.is_control()) {
        return Err(Failure::field(
            "invalid-module",
            field,
            format!(
                "`{field}` contains the control character U+{:04X} at character {}; send the module path alone, such as \"agent.tools\"",
                u32::from(c),
                i + 1
            ),
        ));
    }
    Ok(())
}

/// The keys of a JSON object, refusing one given twice (anything else is ignored:
/// [`Fields`] reads the values).
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueKeys;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UniqueKeys, A::Error> {
                let mut seen = std::collections::HashSet::new();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if !seen.insert(key.clone().into_owned()) {
                        return Err(serde::de::Error::custom(format!(
                            "the field `{key}` is given twice"
                        )));
                    }
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
                Ok(UniqueKeys)
            }
        }
        d.deserialize_map(Visitor)
    }
}

fn wrong_type(name: &str, expected: &str, got: &Value) -> Failure {
    Failure::field(
        "invalid-field",
        name,
        format!("`{name}` must be {expected}, not {}", type_name(got)),
    )
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<WriteRequest, Failure>) -> Failure {
        r.expect_err("should fail")
    }

    #[test]
    fn the_seed_example_parses_with_defaults() {
        let req = self_modify(
            br#"{"module_name": "agent.test_hot_reload", "new_code": "fn f() {}", "backup_enabled": true}"#,
        )
        .expect("parses");
        assert_eq!(
            req,
            WriteRequest {
                op: Operation::SelfModify {
                    module: "agent.test_hot_reload".into(),
                    edit: Edit::merge("fn f() {}"),
                },
                verify: true,
                backup: true,
                dry_run: false,
            }
        );
        let req =
            dynamic_import(br#"{"code": "pub fn hello() {}", "module_name": "dynamic_module"}"#)
                .expect("parses");
        assert_eq!(
            req.op,
            Operation::Import(ImportSpec::new("dynamic_module", "pub fn hello() {}"))
        );
    }

    #[test]
    fn bad_bodies_name_the_field() {
        for (body, kind, field) in [
            (
                &br#"{"new_code": "fn f() {}"}"#[..],
                "missing-field",
                Some("module_name"),
            ),
            (
                br#"{"module_name": "agent"}"#,
                "missing-field",
                Some("new_code"),
            ),
            (
                br#"{"module_name": 5, "new_code": ""}"#,
                "invalid-field",
                Some("module_name"),
            ),
            (
                br#"{"module_name": "a", "new_code": ["x"]}"#,
                "invalid-field",
                Some("new_code"),
            ),
            (
                br#"{"module_name": "a", "new_code": "", "verify": "yes"}"#,
                "invalid-field",
                Some("verify"),
            ),
            (
                br#"{"module_name": "a", "new_code": "", "backup_enabled": 1}"#,
                "invalid-field",
                Some("backup_enabled"),
            ),
            (
                br#"{"module_name": "a", "new_code": "", "mode": "upsert"}"#,
                "invalid-field",
                Some("mode"),
            ),
            (
                br#"{"module_name": "a", "new_code": "", "verfy": false}"#,
                "unknown-field",
                Some("verfy"),
            ),
            (
                br#"{"module_name": "../etc", "new_code": ""}"#,
                "invalid-module",
                Some("module_name"),
            ),
            (
                br#"{"module_name": "agent/x", "new_code": ""}"#,
                "invalid-module",
                Some("module_name"),
            ),
            (
                br#"{"module_name": "a", "mode": "remove"}"#,
                "missing-field",
                Some("items"),
            ),
            (
                br#"{"module_name": "a", "mode": "remove", "items": []}"#,
                "invalid-field",
                Some("items"),
            ),
            (
                br#"{"module_name": "a", "mode": "remove", "items": [1]}"#,
                "invalid-field",
                Some("items"),
            ),
            (
                br#"{"module_name": "a", "new_code": "", "items": ["fn f"]}"#,
                "invalid-field",
                Some("items"),
            ),
            (
                br#"{"module_name": "a", "new_code": "", "verify": null}"#,
                "invalid-field",
                Some("verify"),
            ),
            (
                br#"{"module_name": "a", "new_code": "", "backup_enabled": null}"#,
                "invalid-field",
                Some("backup_enabled"),
            ),
            (
                br#"{"module_name": "a", "new_code": "", "dry_run": null}"#,
                "invalid-field",
                Some("dry_run"),
            ),
            (
                b"{\"module_name\": \"agent\\n\", \"new_code\": \"\"}",
                "invalid-module",
                Some("module_name"),
            ),
            (
                b"{\"module_name\": \"ag\\u0000ent\", \"new_code\": \"\"}",
                "invalid-module",
                Some("module_name"),
            ),
            (
                br#"{"module_name": "a", "new_code": "fn f() {}", "new_code": "fn g() {}"}"#,
                "invalid-json",
                None,
            ),
            (
                br#"{"module_name": "a", "module_name": "b", "new_code": ""}"#,
                "invalid-json",
                None,
            ),
            (br#"["module_name"]"#, "invalid-json", None),
            (br#""#, "invalid-json", None),
        ] {
            let f = err(self_modify(body));
            assert_eq!(f.status, 400, "{}", String::from_utf8_lossy(body));
            assert_eq!(
                f.kind,
                kind,
                "{}: {}",
                String::from_utf8_lossy(body),
                f.message
            );
            assert_eq!(
                f.field.as_deref(),
                field,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let f = err(self_modify(b"{\"module_name\": \"a\",\n  \"new_code\": }"));
        assert_eq!(
            (f.kind, f.line, f.column),
            ("invalid-json", Some(2), Some(15))
        );
    }

    #[test]
    fn strict_parsing_says_what_is_wrong_in_few_words() {
        let f = err(self_modify(
            br#"{"module_name": "a", "new_code": "x", "new_code": "y"}"#,
        ));
        assert!(
            f.message.contains("`new_code` is given twice"),
            "{}",
            f.message
        );
        let f = err(self_modify(
            br#"{"module_name": "a", "new_code": "", "verify": null}"#,
        ));
        assert!(
            f.message.contains("true or false, not null"),
            "{}",
            f.message
        );
        let f = err(self_modify(
            b"{\"module_name\": \"agent\\n\", \"new_code\": \"\"}",
        ));
        assert!(f.message.contains("U+000A at character 6"), "{}", f.message);
        // A huge module name: refused by its length, not echoed.
        let body = serde_json::json!({ "module_name": "a".repeat(900_000), "new_code": "" });
        let f = err(self_modify(body.to_string().as_bytes()));
        assert_eq!(f.field.as_deref(), Some("module_name"));
        assert!(f.message.contains("900000 bytes long"), "{}", f.message);
        assert!(f.message.len() < 200, "{}", f.message);
        // Duplicate keys in nested values are not the top level's business.
        assert!(dynamic_import(br#"{"code": "fn f() {}", "module_name": "m"}"#).is_ok());
        let long = "a".repeat(MAX_MODULE_NAME + 1);
        let f = history(&[("module".to_owned(), long)]).expect_err("too long");
        assert_eq!(f.field.as_deref(), Some("module"));
    }

    #[test]
    fn history_queries_are_bounded() {
        assert_eq!(
            history(&[]).expect("default").limit,
            Some(DEFAULT_HISTORY_LIMIT)
        );
        let pair = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        assert_eq!(history(&pair("limit", "7")).expect("7").limit, Some(7));
        for (k, v) in [
            ("limit", "0"),
            ("limit", "1001"),
            ("limit", "ten"),
            ("kind", "party"),
            ("module", "../x"),
            ("since", "1"),
        ] {
            let f = history(&pair(k, v)).expect_err(v);
            assert_eq!((f.status, f.field.as_deref()), (400, Some(k)), "{k}={v}");
        }
    }
}
