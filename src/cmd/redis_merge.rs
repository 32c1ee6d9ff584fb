//! `regtally redis-merge DIR --url redis://HOST:PORT`: merges the Redis export of `run --redis`
//! into GitLab's live keys, never losing a member already there.
//!
//! Each key: its value is written to a temporary key beside it (the same `{…}` hash tag, so
//! the same cluster slot), `PFMERGE`d into the live key and deleted, in one Lua script so that
//! GitLab's own `PFADD`s in between cannot be lost or make the key look new. A key that did
//! not exist gets the expiry GitLab would have given it, 6 weeks from the week's end; a key
//! that exists keeps its own. A week whose key no longer exists and would already have expired
//! is skipped: GitLab reads it no more. A key holding anything but a HyperLogLog is refused
//! and left as it is.

use crate::cmd::flags::{check_range, parse_date, usage};
use crate::output::redis::connect::{connect, parse_target, redacted, Secrets, TlsFiles};
use crate::output::redis::hll::RedisHll;
use crate::output::redis::{read_manifest, ManifestKey, KEY_WEEKS};
use anyhow::{Context, Result};
use chrono::{DateTime, NaiveDate, Utc};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `regtally redis-merge`.
#[derive(Debug, Args)]
pub struct RedisMergeArgs {
    /// A folder written by `regtally run --redis`.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// The Redis GitLab counts in: redis://[USER[:PASSWORD]@]HOST:PORT[/DB] (rediss:// for TLS),
    /// redis+sentinel://[USER[:PASSWORD]@]HOST:PORT[,HOST:PORT...]/MASTER[/DB] or
    /// redis+cluster://[USER[:PASSWORD]@]HOST:PORT[,HOST:PORT...] (rediss+... for TLS).
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// Take the password (of the server, the master or the cluster's nodes) from this
    /// environment variable instead of the URL.
    #[arg(long, value_name = "VAR")]
    pub password_env: Option<String>,
    /// Take the sentinels' password from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub sentinel_password_env: Option<String>,
    /// With TLS: trust this CA certificate (PEM) instead of the system's trust store.
    #[arg(long, value_name = "FILE")]
    pub redis_ca: Option<PathBuf>,
    /// With TLS: present this client certificate (PEM); needs --redis-key.
    #[arg(long, value_name = "FILE", requires = "redis_key")]
    pub redis_cert: Option<PathBuf>,
    /// With TLS: the client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "redis_cert")]
    pub redis_key: Option<PathBuf>,
    /// Only weeks that start on or after this UTC day (YYYY-MM-DD).
    #[arg(long, value_name = "DATE", value_parser = parse_date)]
    pub since: Option<NaiveDate>,
    /// Only weeks that start before this UTC day (YYYY-MM-DD).
    #[arg(long, value_name = "DATE", value_parser = parse_date)]
    pub until: Option<NaiveDate>,
    /// Print, per key, the live count, the replayed count and the count after merging, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Writes the value ARGV[1] to the temporary key (KEYS[2]), merges it into the live one
/// (KEYS[1]) and deletes it; a live key that did not exist gets the expiry ARGV[2]. Returns
/// the replayed count and the live key's count after the merge.
const MERGE: &str = r"
local existed = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[2], ARGV[1], 'PX', 600000)
local replayed = redis.call('PFCOUNT', KEYS[2])
redis.call('PFMERGE', KEYS[1], KEYS[2])
redis.call('DEL', KEYS[2])
if existed == 0 then
  redis.call('EXPIREAT', KEYS[1], ARGV[2])
end
return {replayed, redis.call('PFCOUNT', KEYS[1])}
";

/// What happened to one key.
enum Outcome {
    Merged {
        live: u64,
        replayed: u64,
        after: u64,
    },
    DryRun {
        live: u64,
        replayed: u64,
        after: u64,
    },
    Expired,
    Refused(String),
}

/// The time a week's key expires when regtally creates it: 6 weeks after the week's end.
fn expiry_of(week_end: NaiveDate) -> i64 {
    (week_end + chrono::Days::new(7 * KEY_WEEKS))
        .and_hms_opt(0, 0, 0)
        .map_or(i64::MAX, |t| t.and_utc().timestamp())
}

/// The temporary key beside `key`: it keeps `key`'s hash tag (the first `{…}`), so a cluster
/// puts both on one node.
fn temp_key(key: &str) -> String {
    format!("{key}:regtally-merge-{}", std::process::id())
}

/// `redis-merge`.
pub fn redis_merge(args: RedisMergeArgs, now: DateTime<Utc>) -> Result<ExitCode> {
    check_range(args.since, args.until)?;
    let manifest = match read_manifest(&args.dir) {
        Ok(m) => m,
        Err(e) => return usage(format!("{e:#}")),
    };
    let keys: Vec<&ManifestKey> = manifest
        .keys
        .iter()
        .filter(|k| {
            args.since.is_none_or(|s| k.week_start >= s)
                && args.until.is_none_or(|u| k.week_start < u)
        })
        .collect();
    let shown = redacted(&args.url);
    let target = match parse_target(&args.url) {
        Ok(t) => t,
        Err(e) => return usage(format!("--url {shown}: {e}")),
    };
    let (tls, secrets) = match side_inputs(&args) {
        Ok(s) => s,
        Err(e) => return usage(e),
    };
    let mut con = connect(&target, &tls, &secrets)
        .map_err(|e| anyhow::anyhow!("cannot connect to {shown}: {e}"))?;

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<64} {:>10} {:>10} {:>10}  result",
        "key", "live", "replayed", "after"
    )?;
    let mut refused = 0;
    for k in keys {
        let outcome =
            merge_one(&mut *con, &args, k, now).with_context(|| format!("{shown}: {}", k.key))?;
        let (numbers, what) = match &outcome {
            Outcome::Merged {
                live,
                replayed,
                after,
            } => ((*live, *replayed, *after), "merged".to_owned()),
            Outcome::DryRun {
                live,
                replayed,
                after,
            } => (
                (*live, *replayed, *after),
                "dry run: nothing changed".to_owned(),
            ),
            Outcome::Expired => {
                writeln!(out, "{:<64} {:>10} {:>10} {:>10}  skipped: the week's key expired (GitLab reads it no more)", k.key, "-", "-", "-")?;
                continue;
            }
            Outcome::Refused(why) => {
                refused += 1;
                writeln!(
                    out,
                    "{:<64} {:>10} {:>10} {:>10}  refused: {why}",
                    k.key, "-", "-", "-"
                )?;
                continue;
            }
        };
        writeln!(
            out,
            "{:<64} {:>10} {:>10} {:>10}  {what}",
            k.key, numbers.0, numbers.1, numbers.2
        )?;
    }
    out.flush()?;
    if refused > 0 {
        eprintln!("regtally: {refused} keys were refused and left as they were");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The TLS files and the secrets from the environment that the flags name.
fn side_inputs(args: &RedisMergeArgs) -> std::result::Result<(TlsFiles, Secrets), String> {
    let read = |flag: &str, path: &PathBuf| {
        std::fs::read(path).map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))
    };
    let env = |flag: &str, var: &String| {
        std::env::var(var)
            .map_err(|_| format!("{flag} {var}: the environment has no such variable"))
    };
    let tls = TlsFiles {
        ca: args
            .redis_ca
            .as_ref()
            .map(|p| read("--redis-ca", p))
            .transpose()?,
        client: match (&args.redis_cert, &args.redis_key) {
            (Some(cert), Some(key)) => {
                Some((read("--redis-cert", cert)?, read("--redis-key", key)?))
            }
            _ => None,
        },
    };
    let secrets = Secrets {
        password: args
            .password_env
            .as_ref()
            .map(|v| env("--password-env", v))
            .transpose()?,
        sentinel_password: args
            .sentinel_password_env
            .as_ref()
            .map(|v| env("--sentinel-password-env", v))
            .transpose()?,
    };
    Ok((tls, secrets))
}

fn merge_one(
    con: &mut dyn redis::ConnectionLike,
    args: &RedisMergeArgs,
    k: &ManifestKey,
    now: DateTime<Utc>,
) -> Result<Outcome> {
    // The manifest names files in its own folder only.
    if k.file.contains('/') || k.file.starts_with('.') {
        return Ok(Outcome::Refused(format!(
            "the manifest names {:?}, not a file of {}",
            k.file,
            args.dir.display()
        )));
    }
    let path = args.dir.join(&k.file);
    let value = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    if RedisHll::from_dense(&value).is_none() {
        return Ok(Outcome::Refused(format!(
            "{} is not a dense Redis HyperLogLog",
            path.display()
        )));
    }
    let kind: String = redis::cmd("TYPE").arg(&k.key).query(con)?;
    let exists = match kind.as_str() {
        "none" => false,
        "string" => {
            let head: Vec<u8> = redis::cmd("GETRANGE")
                .arg(&k.key)
                .arg(0)
                .arg(3)
                .query(con)?;
            if head != b"HYLL" {
                return Ok(Outcome::Refused(
                    "holds a string that is not a HyperLogLog".to_owned(),
                ));
            }
            true
        }
        other => {
            return Ok(Outcome::Refused(format!(
                "holds a {other}, not a HyperLogLog"
            )))
        }
    };
    let expires = expiry_of(k.week_end);
    if !exists && expires <= now.timestamp() {
        return Ok(Outcome::Expired);
    }
    // Counted as a union (the key twice): PFCOUNT of one key would store its count in the
    // key's header, a write the dry run must not make.
    let live: u64 = redis::cmd("PFCOUNT").arg(&k.key).arg(&k.key).query(con)?;
    let temp = temp_key(&k.key);
    if args.dry_run {
        // The one write: a temporary key, gone at once (and in a minute in any case).
        let () = redis::cmd("SET")
            .arg(&temp)
            .arg(&value)
            .arg("PX")
            .arg(60_000)
            .query(con)?;
        // Two commands, not a pipeline: a cluster's connection has none.
        let counts = redis::cmd("PFCOUNT")
            .arg(&temp)
            .query::<u64>(con)
            .and_then(|replayed| {
                let after = redis::cmd("PFCOUNT").arg(&k.key).arg(&temp).query(con)?;
                Ok((replayed, after))
            });
        let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(&temp).query(con);
        let (replayed, after) = counts?;
        return Ok(Outcome::DryRun {
            live,
            replayed,
            after,
        });
    }
    let merged: redis::RedisResult<(u64, u64)> = redis::cmd("EVAL")
        .arg(MERGE)
        .arg(2)
        .arg(&k.key)
        .arg(&temp)
        .arg(&value)
        .arg(expires)
        .query(con);
    match merged {
        Ok((replayed, after)) => Ok(Outcome::Merged {
            live,
            replayed,
            after,
        }),
        Err(e) => {
            // GitLab's key changed type in between: the script stopped at PFMERGE.
            let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(&temp).query(con);
            Ok(Outcome::Refused(format!("the merge failed: {e}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::d;

    #[test]
    fn a_new_key_expires_six_weeks_after_its_week() {
        // Week 2023-W04 ends on Monday 2023-01-30; six weeks later is 2023-03-13.
        assert_eq!(
            expiry_of(d(2023, 1, 30)),
            d(2023, 3, 13)
                .and_hms_opt(0, 0, 0)
                .unwrap()
                .and_utc()
                .timestamp()
        );
        let key = "{hll_counters}_i_container_registry_push_tag_user-2023-04";
        assert!(temp_key(key).starts_with(
            "{hll_counters}_i_container_registry_push_tag_user-2023-04:regtally-merge-"
        ));
    }
}
