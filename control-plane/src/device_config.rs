//! Device configuration: a JSON object per device, versioned in the store
//! and pushed to a connected agent. Keys the agent understands are checked
//! here; other keys are kept for the operator's own tooling.

use serde_json::{Value, json};

/// Largest config accepted, serialized.
pub const MAX_CONFIG_BYTES: usize = 32 * 1024;

/// Keys the agent acts on, with their rule.
pub const KNOWN_KEYS: &[(&str, &str)] = &[(
    "telemetry_interval_secs",
    "integer, 1 to 86400: seconds between telemetry samples",
)];

/// What a new device gets as config version 1: nothing set, so the agent
/// runs on its own settings (flags, agent.toml) until an operator sets keys.
pub fn default_config() -> Value {
    json!({})
}

/// Checks a config from an operator; the message names the offending key.
pub fn validate(config: &Value) -> Result<(), String> {
    let obj = config.as_object().ok_or("config must be a JSON object")?;
    if serde_json::to_vec(config)
        .map(|v| v.len())
        .unwrap_or(usize::MAX)
        > MAX_CONFIG_BYTES
    {
        return Err(format!("config must be at most {MAX_CONFIG_BYTES} bytes"));
    }
    if let Some(v) = obj.get("telemetry_interval_secs") {
        match v.as_u64() {
            Some(n) if (1..=86_400).contains(&n) => {}
            _ => return Err("telemetry_interval_secs must be an integer from 1 to 86400".into()),
        }
    }
    Ok(())
}

/// What an operator should hear about a valid config: each top-level key
/// the agent does not act on (kept, for the operator's own tooling), with
/// the known key it most likely meant when one is close.
pub fn warnings(config: &Value) -> Vec<String> {
    let Some(obj) = config.as_object() else {
        return Vec::new();
    };
    obj.keys()
        .filter(|k| !KNOWN_KEYS.iter().any(|(known, _)| known == k))
        .map(|k| {
            let close = KNOWN_KEYS
                .iter()
                .map(|(known, _)| (edit_distance(k, known), *known))
                .filter(|(d, known)| *d <= (known.len() / 4).max(2))
                .min();
            match close {
                Some((_, known)) => format!(
                    "{k:?} is not a key the agent acts on (kept as is); did you mean {known:?}?"
                ),
                None => format!("{k:?} is not a key the agent acts on (kept as is)"),
            }
        })
        .collect()
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// RFC 7396 JSON merge patch: `patch` applied to `target`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    if let Value::Object(obj) = target {
        for (k, v) in patch {
            if v.is_null() {
                obj.remove(k);
            } else {
                merge_patch(obj.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// The telemetry interval a config asks for, if any.
pub fn telemetry_interval_secs(config: &Value) -> Option<u32> {
    config
        .get("telemetry_interval_secs")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named_with_the_likely_intended_one() {
        let w = warnings(&json!({"telemetry_intervall_secs": 5, "site": "berlin"}));
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w.iter()
                .any(|w| w.contains("\"site\"") && !w.contains("did you mean")),
            "{w:?}"
        );
        assert!(
            w.iter().any(|w| w.contains("telemetry_intervall_secs")
                && w.contains("did you mean \"telemetry_interval_secs\"")),
            "{w:?}"
        );
        assert!(warnings(&json!({"telemetry_interval_secs": 5})).is_empty());
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    /// The examples of RFC 7396, appendix A.
    #[test]
    fn merge_patch_follows_rfc_7396() {
        for (target, patch, result) in [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ] {
            let mut t = target.clone();
            merge_patch(&mut t, &patch);
            assert_eq!(t, result, "{target} + {patch}");
        }
    }

    #[test]
    fn validates_known_keys_and_shape() {
        assert!(validate(&default_config()).is_ok());
        assert!(validate(&json!({"custom": {"anything": [1, 2]}})).is_ok());
        assert!(validate(&json!([1])).unwrap_err().contains("object"));
        for bad in [json!(0), json!(86_401), json!("10"), json!(1.5)] {
            let err = validate(&json!({ "telemetry_interval_secs": bad })).unwrap_err();
            assert!(err.contains("telemetry_interval_secs"), "{err}");
        }
        let big = json!({ "blob": "x".repeat(MAX_CONFIG_BYTES) });
        assert!(validate(&big).unwrap_err().contains("at most"));
        assert_eq!(telemetry_interval_secs(&default_config()), None);
        assert_eq!(
            telemetry_interval_secs(&json!({"telemetry_interval_secs": 30})),
            Some(30)
        );
    }
}
