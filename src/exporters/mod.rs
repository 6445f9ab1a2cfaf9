//! Exporters: where results go.
//!
//! - [`prometheus`]: `/metrics` (text exposition), `/healthz`, `/readyz`.

pub mod prometheus;
