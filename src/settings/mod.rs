//! The shared configuration primitives every component's configuration is
//! made of: durations as written (`5m`), secrets that must come from the
//! environment or a file, and credentials. The bottom layer: it imports no
//! other part of doraflow, and every component may use it; each component
//! owns its own configuration struct beside its code, and [`crate::config`]
//! only assembles them.

mod auth;
mod duration;
mod secret;

pub use auth::{BasicAuth, ClientAuth, ReceiverAuth};
pub use duration::{ConfigDuration, DurationError};
pub use secret::Secret;
pub(crate) use secret::{LITERAL_SECRET, is_from_outside as secret_from_outside, parsing_config};
