//! The subcommands, one file each, and the checks of flag values they share ([`flags`]).

pub mod flags;
pub mod redis_merge;
pub mod report;
pub mod run;
