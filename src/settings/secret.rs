//! Secrets in the configuration: tokens, routing keys, signing keys.

use std::cell::RefCell;

use serde::{Deserialize, Deserializer};
use subtle::ConstantTimeEq;

/// A secret from the config: `${env:NAME}` or `${file:PATH}`, never
/// written in the file itself. Usable, compared in constant time, never
/// shown by `Debug`.
#[derive(Clone)]
pub struct Secret(String);

/// The message for a secret written in the config file.
pub(crate) const LITERAL_SECRET: &str = "a secret must come from `${env:NAME}` or `${file:PATH}`, not be written in the config (config files end up in version control, backups and support tickets)";

thread_local! {
    /// While a config file is parsed on this thread: the values that came
    /// from the environment or from files.
    static FROM_OUTSIDE: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// Runs `parse` with `from_outside` as the values a [`Secret`] may take:
/// a secret deserialized meanwhile that is none of them was written in the
/// config, and is refused.
pub(crate) fn parsing_config<R>(from_outside: Vec<String>, parse: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            FROM_OUTSIDE.with(|f| f.borrow_mut().take());
        }
    }
    FROM_OUTSIDE.with(|f| *f.borrow_mut() = Some(from_outside));
    let _reset = Reset;
    parse()
}

/// Whether `value` came from outside the config file being parsed; `None`
/// when no config file is being parsed (a `Secret` built by other means).
fn from_outside(value: &str) -> Option<bool> {
    FROM_OUTSIDE.with(|f| f.borrow().as_ref().map(|v| v.iter().any(|o| o == value)))
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        if value.trim().is_empty() {
            return Err(serde::de::Error::custom("a secret must not be empty"));
        }
        if from_outside(&value) == Some(false) {
            return Err(serde::de::Error::custom(LITERAL_SECRET));
        }
        Ok(Secret(value))
    }
}

/// Whether the setting `value` may stand in the config: false for a value
/// written in the config file being parsed (see [`parsing_config`]).
pub(crate) fn is_from_outside(value: &str) -> bool {
    from_outside(value) != Some(false)
}

impl Secret {
    /// The secret itself, for the one place that sends or keys with it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is the secret, in time that depends only on the
    /// lengths, so that timing tells an attacker nothing about the bytes.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(candidate).into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_matches_only_itself_and_never_shows() {
        let s = Secret::from("s3cr3t-t0ken");
        assert!(s.matches(b"s3cr3t-t0ken"));
        assert!(!s.matches(b"s3cr3t-t0kem"));
        assert!(!s.matches(b"s3cr3t"));
        assert!(!s.matches(b""));
        assert_eq!(format!("{s:?}"), "<redacted>");
    }
}
