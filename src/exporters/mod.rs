//! Exporters: where results go.
//!
//! - [`prometheus`]: `/metrics` (text exposition), `/healthz`, `/readyz`, `/api/v1/dora`.
//! - [`exposition`]: the text format of the DORA families.
//! - [`pagerduty`]: alert transitions to the PagerDuty Events API v2.

pub mod exposition;
pub mod pagerduty;
pub mod prometheus;
