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
