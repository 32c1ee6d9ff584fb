//! The subcommands, one file each.

pub mod redis_merge;
pub mod report;
pub mod run;
