//! Builds components from config, wires them with bounded channels, and owns
//! their lifecycle.
//!
//! Data flows one way: receivers → [`PipelineSink`] (a bounded queue, in
//! [`crate::flow`]) → the engine task, which owns every processor's state →
//! exporters, which read snapshots through [`PipelineReader`].
//!
//! Shutdown is ordered: stop the receivers, let the engine drain the queue,
//! then stop the exporters.
//!
//! The files, by job:
//! - [`crate::flow`]: the contract between the parts (the queue, its
//!   envelope, the read side, readiness), below them all;
//! - [`build`]: builds components from config and wires them; the staged
//!   shutdown;
//! - [`engine`]: the task that owns every processor's state and its loop;
//! - [`restore`]: state brought back at start (storage, undelivered alerts).

mod build;
mod engine;
mod restore;
mod task;

pub use build::{run, run_with_clock};
pub use engine::{Ownership, Replayer};
pub use task::{ChangelogRecords, Restored, Task, TaskFactory};

pub(crate) use crate::flow::{Envelope, Query};
pub use crate::flow::{
    Figures, Forward, ForwardEvent, KafkaSource, PipelineQueue, PipelineReader, PipelineSink,
    Readiness, SubmitError, forwarding_queue, queue,
};
