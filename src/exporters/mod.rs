//! Exporters: where results go.
//!
//! - [`prometheus`]: `/metrics` (text exposition), `/healthz`, `/readyz`, `/api/v1/dora`.
//! - [`exposition`]: the text format of the DORA families.

pub mod exposition;
pub mod prometheus;
