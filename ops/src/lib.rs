//! The operator and demo commands, apart from the pipelines they look at:
//! `relay status`, `relay replay`, `relay resend`, `relay generate`,
//! `sink status`, `sink rewind`, `sink reconcile`, `sink watch` and `sink dashboard`. The `relay` and
//! `sink` crates hold their pipelines; the binaries (`cli`) offer these as
//! their subcommands.

pub mod dashboard;
pub mod generate;
pub mod reconcile;
pub mod relay_status;
pub mod replay;
pub mod resend;
pub mod rewind;
pub mod sink_status;
pub mod watch;
