//! Secrets in the configuration: tokens, routing keys, signing keys.

use serde::Deserialize;
use subtle::ConstantTimeEq;

/// A secret from the config (usually `${env:NAME}` or `${file:PATH}`):
/// usable, compared in constant time, never shown by `Debug`.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

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
