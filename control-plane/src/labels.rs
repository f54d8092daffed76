//! Device labels: Kubernetes label syntax, and selectors over them.
//!
//! A key is an optional prefix (a DNS subdomain, ≤ 253 characters) and `/`,
//! then a name of 1–63 characters `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`.
//! A value is empty or follows the name rule. A device carries at most
//! [`MAX_LABELS`]. Pure functions only: the REST layer turns their errors
//! into 400s, the store keeps what passed, and rollouts (issue 20) select
//! devices with [`Selector`].

use std::collections::BTreeMap;

/// A device's labels, ordered by key.
pub type Labels = BTreeMap<String, String>;

/// Labels per device at most.
pub const MAX_LABELS: usize = 32;

const MAX_NAME: usize = 63;
const MAX_PREFIX: usize = 253;

/// Why a label (or selector) was refused; the message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LabelError(pub String);

/// The name rule shared by key names and values.
fn name_ok(s: &str) -> bool {
    let b = s.as_bytes();
    let edge = |c: u8| c.is_ascii_alphanumeric();
    let inner = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
    !b.is_empty()
        && b.len() <= MAX_NAME
        && edge(b[0])
        && edge(b[b.len() - 1])
        && b.iter().all(|&c| inner(c))
}

/// A DNS subdomain: dot-separated lowercase RFC 1123 labels.
fn prefix_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_PREFIX
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            let edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
            !b.is_empty()
                && b.len() <= 63
                && edge(b[0])
                && edge(b[b.len() - 1])
                && b.iter().all(|&c| edge(c) || c == b'-')
        })
}

/// Checks a label key.
pub fn validate_key(key: &str) -> Result<(), LabelError> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && !prefix_ok(p)
    {
        return Err(LabelError(format!(
            "label key {key:?}: the prefix before '/' must be a DNS subdomain \
             (lowercase letters, digits, '-' and '.', at most {MAX_PREFIX} characters)"
        )));
    }
    if !name_ok(name) {
        return Err(LabelError(format!(
            "label key {key:?}: the name must be 1 to {MAX_NAME} characters of letters, digits, \
             '-', '_' and '.', starting and ending with a letter or digit"
        )));
    }
    Ok(())
}

/// Checks a label value (of `key`, for the message).
pub fn validate_value(key: &str, value: &str) -> Result<(), LabelError> {
    if value.is_empty() || name_ok(value) {
        Ok(())
    } else {
        Err(LabelError(format!(
            "label {key:?}: value {value:?} must be empty or 1 to {MAX_NAME} characters of \
             letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        )))
    }
}

/// Checks a whole label set (each key and value, and the count).
pub fn validate(labels: &Labels) -> Result<(), LabelError> {
    if labels.len() > MAX_LABELS {
        return Err(LabelError(format!(
            "at most {MAX_LABELS} labels per device (got {})",
            labels.len()
        )));
    }
    for (k, v) in labels {
        validate_key(k)?;
        validate_value(k, v)?;
    }
    Ok(())
}

/// Applies a JSON merge patch of the labels map (RFC 7396): a value sets the
/// key, `None` (JSON `null`) removes it. The result is validated.
pub fn merge(
    current: &Labels,
    patch: &BTreeMap<String, Option<String>>,
) -> Result<Labels, LabelError> {
    let mut out = current.clone();
    for (k, v) in patch {
        match v {
            Some(v) => {
                validate_key(k)?;
                validate_value(k, v)?;
                out.insert(k.clone(), v.clone());
            }
            None => {
                out.remove(k);
            }
        }
    }
    validate(&out)?;
    Ok(out)
}

/// One requirement on a device's labels: `key=value` (the key has that
/// value) or `key` (the key is present, any value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub key: String,
    pub value: Option<String>,
}

impl Selector {
    /// Parses `key=value` or `key`; both sides follow the label rules.
    pub fn parse(s: &str) -> Result<Self, LabelError> {
        let (key, value) = match s.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (s, None),
        };
        validate_key(key)?;
        if let Some(v) = value {
            validate_value(key, v)?;
        }
        Ok(Selector {
            key: key.to_string(),
            value: value.map(str::to_string),
        })
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        match (labels.get(&self.key), &self.value) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(have), Some(want)) => have == want,
        }
    }

    /// Whether every selector matches (an empty list matches everything).
    pub fn all_match(selectors: &[Selector], labels: &Labels) -> bool {
        selectors.iter().all(|s| s.matches(labels))
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}={v}", self.key),
            None => f.write_str(&self.key),
        }
    }
}

/// A label key as a Prometheus label name: `label_` + the key with every
/// character outside `[A-Za-z0-9_]` replaced by `_` (Kubernetes'
/// kube-state-metrics does the same). Distinct keys can map to one name
/// (`a.b` and `a_b`); the metrics exporter keeps the first by key order.
pub fn prometheus_name(key: &str) -> String {
    let mut out = String::with_capacity(6 + key.len());
    out.push_str("label_");
    out.extend(key.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn keys_follow_the_kubernetes_rules() {
        for ok in [
            "site",
            "a",
            "app.kubernetes.io/name",
            "example.com/Tier_2",
            "x-y.z_w",
            &"a".repeat(63),
        ] {
            assert!(validate_key(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-site",
            "site-",
            "si te",
            "/name",
            "Example.com/name",
            "ex_ample.com/name",
            "a/b/c",
            "prefix/",
            "naïve",
            &"a".repeat(64),
        ] {
            let e = validate_key(bad).unwrap_err();
            assert!(e.0.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn values_may_be_empty_and_otherwise_follow_the_name_rule() {
        assert!(validate_value("k", "").is_ok());
        assert!(validate_value("k", "v1.2_3-x").is_ok());
        for bad in ["-v", "v-", "a b", "x/y", &"v".repeat(64)] {
            let e = validate_value("k", bad).unwrap_err();
            assert!(e.0.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn at_most_32_labels() {
        let many: Labels = (0..33).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(validate(&many).unwrap_err().0.contains("32"));
        let ok: Labels = (0..32).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(validate(&ok).is_ok());
    }

    #[test]
    fn merge_patch_sets_replaces_and_removes() {
        let cur = labels(&[("site", "berlin"), ("tier", "1")]);
        let patch: BTreeMap<String, Option<String>> = [
            ("site".to_string(), Some("paris".to_string())),
            ("tier".to_string(), None),
            ("new".to_string(), Some(String::new())),
            ("absent".to_string(), None),
        ]
        .into();
        assert_eq!(
            merge(&cur, &patch).unwrap(),
            labels(&[("new", ""), ("site", "paris")])
        );
        let bad: BTreeMap<String, Option<String>> =
            [("bad key".to_string(), Some("v".into()))].into();
        assert!(merge(&cur, &bad).unwrap_err().0.contains("\"bad key\""));
        let too_many: BTreeMap<String, Option<String>> = (0..31)
            .map(|i| (format!("n{i}"), Some(String::new())))
            .collect();
        assert!(merge(&cur, &too_many).is_err());
    }

    #[test]
    fn selectors_parse_and_match() {
        let l = labels(&[("site", "berlin"), ("gpu", "")]);
        let s = Selector::parse("site=berlin").unwrap();
        assert_eq!(s.value.as_deref(), Some("berlin"));
        assert!(s.matches(&l));
        assert!(!Selector::parse("site=paris").unwrap().matches(&l));
        assert!(Selector::parse("gpu").unwrap().matches(&l));
        assert!(Selector::parse("gpu=").unwrap().matches(&l));
        assert!(!Selector::parse("site=").unwrap().matches(&l));
        assert!(!Selector::parse("absent").unwrap().matches(&l));
        let both = [
            Selector::parse("site=berlin").unwrap(),
            Selector::parse("gpu").unwrap(),
        ];
        assert!(Selector::all_match(&both, &l));
        assert!(Selector::all_match(&[], &l));
        assert!(Selector::parse("bad key=v").is_err());
        assert!(Selector::parse("k=bad value").is_err());
        assert_eq!(Selector::parse("a.b/c=d").unwrap().to_string(), "a.b/c=d");
    }

    #[test]
    fn prometheus_names_are_safe() {
        assert_eq!(prometheus_name("site"), "label_site");
        assert_eq!(
            prometheus_name("app.kubernetes.io/name"),
            "label_app_kubernetes_io_name"
        );
        assert_eq!(prometheus_name("x-y"), "label_x_y");
    }
}
