//! regtally: GitLab's container-registry usage metrics, computed in batch from archived
//! registry notification logs.
//!
//! The modules follow the data: [`read`] (bytes to chunks of lines), [`parse`] (lines to
//! events), [`records`] (events to compact records), [`classify`] and [`ledger`] (records to
//! tracked events), [`aggregate`] and [`sketch`] (tracked events to per-period sketches),
//! [`output`] (sketches to files). [`pipeline`] runs them; [`state`] carries what a nightly
//! run needs into the next; [`cli`] and [`cmd`] validate flags before any log is read.

pub mod aggregate;
pub mod classify;
pub mod cli;
pub mod cmd;
pub mod ledger;
pub mod output;
pub mod parse;
pub mod period;
pub mod pipeline;
pub mod read;
pub mod records;
pub mod sketch;
pub mod state;
pub mod timestamp;
