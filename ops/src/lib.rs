//! The operator commands, apart from the pipelines they look at: `relay
//! status`, `relay replay`, `relay resend`, `sink status`, `sink rewind`,
//! `sink reconcile` and `sink dashboard` (each flow's status). The `relay`
//! and `sink` crates hold their pipelines; the binaries (`cli`) offer these
//! as their subcommands. The demo's commands are in the `outbox-demo` crate.

pub mod dashboard;
pub mod reconcile;
pub mod relay_status;
pub mod replay;
pub mod resend;
pub mod rewind;
pub mod sink_status;
