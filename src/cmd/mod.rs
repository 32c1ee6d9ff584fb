//! The subcommands, one file each.

pub mod report;
pub mod run;
