//! Credentials: the token a receiver asks for, the ones an exporter sends.

use serde::Deserialize;

use super::Secret;

/// `auth` of a receiver: the bearer token a client must send
/// (`authorization: Bearer <token>`, as an HTTP header or gRPC metadata).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverAuth {
    /// The token, from `${env:NAME}` or `${file:PATH}`.
    pub bearer_token: Secret,
}

/// `auth` of an exporter that calls an HTTP endpoint: a bearer token, or
/// HTTP basic credentials (Alertmanager's own `basic_auth_users`, a proxy).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuth {
    /// Sent as `authorization: Bearer <token>`; from `${env:NAME}` or `${file:PATH}`.
    #[serde(default)]
    pub bearer_token: Option<Secret>,
    /// Sent as `authorization: Basic …`.
    #[serde(default)]
    pub basic_auth: Option<BasicAuth>,
}

/// `auth.basic_auth` of an exporter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    /// The user name.
    pub username: String,
    /// The password, from `${env:NAME}` or `${file:PATH}`.
    pub password: Secret,
}

impl ClientAuth {
    /// Checks that exactly one kind of credentials is given.
    pub fn validate(&self, path: &str, errors: &mut Vec<String>) {
        match (&self.bearer_token, &self.basic_auth) {
            (Some(_), Some(_)) => {
                errors.push(format!("{path}: give bearer_token or basic_auth, not both"))
            }
            (None, None) => errors.push(format!(
                "{path}: give bearer_token or basic_auth (or leave auth out)"
            )),
            (None, Some(b)) if b.username.is_empty() || b.username.contains(':') => errors.push(
                format!("{path}.basic_auth.username: must not be empty or hold `:`"),
            ),
            _ => {}
        }
    }

    /// `authorization` of a request with these credentials.
    pub fn header_value(&self) -> Option<String> {
        use base64::Engine as _;
        if let Some(token) = &self.bearer_token {
            return Some(format!("Bearer {}", token.expose()));
        }
        self.basic_auth.as_ref().map(|b| {
            let pair = format!("{}:{}", b.username, b.password.expose());
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        })
    }
}
