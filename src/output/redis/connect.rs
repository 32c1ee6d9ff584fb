//! Where `redis-merge` connects: GitLab's shared-state Redis as it runs, alone, behind TLS,
//! with an ACL user, through Sentinel or as a cluster.
//!
//! One URL names the server:
//!
//! - `redis://[USER[:PASSWORD]@]HOST:PORT[/DB]`, or `rediss://` for TLS;
//! - `redis+sentinel://[USER[:PASSWORD]@]HOST:PORT[,HOST:PORT...]/MASTER[/DB]`: the sentinels
//!   and the name of the master they watch (`rediss+sentinel://`: TLS to the sentinels and to
//!   the master); the user and password are the master's;
//! - `redis+cluster://[USER[:PASSWORD]@]HOST:PORT[,HOST:PORT...]`: some of the cluster's nodes
//!   (`rediss+cluster://` for TLS). GitLab's keys carry the hash tag `{hll_counters}`, so each
//!   merge (a key and its temporary twin) stays on one node.
//!
//! A secret need not be in the URL, where it would show in `ps` and shell histories: the
//! password may come from an environment variable instead. Messages name the URL with its
//! password replaced by `***`.

use redis::{
    ClientTlsConfig, ConnectionAddr, ConnectionInfo, ConnectionLike, IntoConnectionInfo,
    RedisConnectionInfo, TlsCertificates, TlsMode,
};
use std::time::Duration;

/// How long connecting may take, and a command's reply.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// A parsed `--url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One server (`redis://`, `rediss://`): the URL as redis-rs reads it.
    Single(String),
    Sentinel {
        sentinels: Vec<(String, u16)>,
        master: String,
        db: i64,
        login: Login,
        tls: bool,
    },
    Cluster {
        nodes: Vec<(String, u16)>,
        login: Login,
        tls: bool,
    },
}

/// The user and password of a URL's user information, percent-decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Login {
    pub user: Option<String>,
    pub password: Option<String>,
}

/// TLS material beyond the system's trust store, as PEM: `--redis-ca` (which then is the only
/// trusted authority) and a client certificate with its key.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    pub ca: Option<Vec<u8>>,
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    fn any(&self) -> bool {
        self.ca.is_some() || self.client.is_some()
    }

    fn certificates(&self) -> TlsCertificates {
        TlsCertificates {
            client_tls: self.client.as_ref().map(|(cert, key)| ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
            root_cert: self.ca.clone(),
        }
    }
}

/// Secrets given apart from the URL: they win over the URL's.
#[derive(Clone, Debug, Default)]
pub struct Secrets {
    /// The password of the server (the master, every cluster node).
    pub password: Option<String>,
    /// The sentinels' password.
    pub sentinel_password: Option<String>,
}

/// `url` with the password of its user information replaced by `***`: what messages show.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let user = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => userinfo.to_owned(),
    };
    format!("{scheme}://{user}{}", &rest[at..])
}

/// Reads `--url`.
pub fn parse_target(url: &str) -> Result<Target, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "not a URL (redis://HOST:PORT)".to_owned())?;
    let (kind, tls) = match scheme {
        "redis" | "rediss" => return Ok(Target::Single(url.to_owned())),
        "redis+sentinel" => ("sentinel", false),
        "rediss+sentinel" => ("sentinel", true),
        "redis+cluster" => ("cluster", false),
        "rediss+cluster" => ("cluster", true),
        other => {
            return Err(format!(
                "unknown scheme {other}:// (redis, rediss, redis+sentinel, rediss+sentinel, redis+cluster, rediss+cluster)"
            ))
        }
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let (login, hosts) = match authority.rfind('@') {
        Some(at) => (login_of(&authority[..at])?, &authority[at + 1..]),
        None => (Login::default(), authority),
    };
    let hosts = hosts
        .split(',')
        .map(host_port)
        .collect::<Result<Vec<_>, _>>()?;
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if kind == "cluster" {
        if !segments.is_empty() {
            return Err("a cluster URL has no path (a cluster has one database)".to_owned());
        }
        return Ok(Target::Cluster {
            nodes: hosts,
            login,
            tls,
        });
    }
    let (master, db) = match segments[..] {
        [master] => (master, 0),
        [master, db] => (
            master,
            db.parse()
                .map_err(|_| format!("database {db:?} is not a number"))?,
        ),
        _ => {
            return Err(
                "a sentinel URL names the master after the sentinels: redis+sentinel://HOST:PORT/MASTER"
                    .to_owned(),
            )
        }
    };
    Ok(Target::Sentinel {
        sentinels: hosts,
        master: percent_decoded(master)?,
        db,
        login,
        tls,
    })
}

fn login_of(userinfo: &str) -> Result<Login, String> {
    let (user, password) = match userinfo.split_once(':') {
        Some((user, password)) => (user, Some(password)),
        None => (userinfo, None),
    };
    Ok(Login {
        user: Some(percent_decoded(user)?).filter(|u| !u.is_empty()),
        password: password.map(percent_decoded).transpose()?,
    })
}

fn host_port(text: &str) -> Result<(String, u16), String> {
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (
            host,
            port.parse::<u16>()
                .map_err(|_| format!("port {port:?} is not a number"))?,
        ),
        _ => (text, 6379),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{text:?} names no host"));
    }
    Ok((host.to_owned(), port))
}

fn percent_decoded(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "a % in the URL is not followed by two hex digits".to_owned())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the URL's user information is not UTF-8".to_owned())
}

fn addr(host: &str, port: u16, tls: bool) -> ConnectionAddr {
    if tls {
        ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host.to_owned(), port)
    }
}

fn with_login(
    mut redis: RedisConnectionInfo,
    user: Option<&str>,
    password: Option<&str>,
) -> RedisConnectionInfo {
    if let Some(user) = user {
        redis = redis.set_username(user);
    }
    if let Some(password) = password {
        redis = redis.set_password(password);
    }
    redis
}

/// Connects to `target`; the connection answers commands as one server would (a cluster's
/// routes each to the node of its key).
pub fn connect(
    target: &Target,
    tls: &TlsFiles,
    secrets: &Secrets,
) -> redis::RedisResult<Box<dyn ConnectionLike>> {
    match target {
        Target::Single(url) => {
            let info: ConnectionInfo = url.as_str().into_connection_info()?;
            let redis = with_login(
                info.redis_settings().clone(),
                None,
                secrets.password.as_deref(),
            );
            let info = info.set_redis_settings(redis);
            let client = if tls.any() {
                redis::Client::build_with_tls(info, tls.certificates())?
            } else {
                redis::Client::open(info)?
            };
            single(&client)
        }
        Target::Sentinel {
            sentinels,
            master,
            db,
            login,
            tls: secure,
        } => {
            let addrs = sentinels.iter().map(|(h, p)| addr(h, *p, *secure));
            let mut builder = redis::sentinel::SentinelClientBuilder::new(
                addrs,
                master,
                redis::sentinel::SentinelServerType::Master,
            )?
            .set_client_to_redis_db(*db);
            if let Some(user) = &login.user {
                builder = builder.set_client_to_redis_username(user);
            }
            if let Some(password) = secrets.password.as_ref().or(login.password.as_ref()) {
                builder = builder.set_client_to_redis_password(password);
            }
            if let Some(password) = &secrets.sentinel_password {
                builder = builder.set_client_to_sentinel_password(password);
            }
            if *secure {
                builder = builder
                    .set_client_to_redis_tls_mode(TlsMode::Secure)
                    .set_client_to_sentinel_tls_mode(TlsMode::Secure);
                if tls.any() {
                    builder = builder
                        .set_client_to_redis_certificates(tls.certificates())
                        .set_client_to_sentinel_certificates(tls.certificates());
                }
            }
            let client = builder.build()?.get_client()?;
            single(&client)
        }
        Target::Cluster {
            nodes,
            login,
            tls: secure,
        } => {
            let infos: Vec<ConnectionInfo> = nodes
                .iter()
                .map(|(h, p)| addr(h, *p, *secure).into_connection_info())
                .collect::<Result<_, _>>()?;
            let mut builder = redis::cluster::ClusterClient::builder(infos)
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(REPLY_TIMEOUT);
            if let Some(user) = &login.user {
                builder = builder.username(user);
            }
            if let Some(password) = secrets.password.as_ref().or(login.password.as_ref()) {
                builder = builder.password(password);
            }
            if *secure {
                builder = builder.tls(TlsMode::Secure);
                if tls.any() {
                    builder = builder.certs(tls.certificates());
                }
            }
            Ok(Box::new(builder.build()?.get_connection()?))
        }
    }
}

fn single(client: &redis::Client) -> redis::RedisResult<Box<dyn ConnectionLike>> {
    let con = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    con.set_read_timeout(Some(REPLY_TIMEOUT))?;
    con.set_write_timeout(Some(REPLY_TIMEOUT))?;
    Ok(Box::new(con))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_one_server_sentinels_or_a_cluster() {
        assert_eq!(
            parse_target("rediss://u:p@h:1/2").unwrap(),
            Target::Single("rediss://u:p@h:1/2".into())
        );
        assert_eq!(
            parse_target("redis+sentinel://gitlab:s%40cret@10.0.0.1:26379,s2:26380/gitlab-redis/3")
                .unwrap(),
            Target::Sentinel {
                sentinels: vec![("10.0.0.1".into(), 26379), ("s2".into(), 26380)],
                master: "gitlab-redis".into(),
                db: 3,
                login: Login {
                    user: Some("gitlab".into()),
                    password: Some("s@cret".into())
                },
                tls: false,
            }
        );
        assert_eq!(
            parse_target("rediss+cluster://:pw@a:7000,[::1]:7001,b").unwrap(),
            Target::Cluster {
                nodes: vec![("a".into(), 7000), ("::1".into(), 7001), ("b".into(), 6379)],
                login: Login {
                    user: None,
                    password: Some("pw".into())
                },
                tls: true,
            }
        );
        for (bad, why) in [
            ("localhost:6379", "not a URL"),
            ("http://h", "unknown scheme"),
            ("redis+sentinel://h:1", "names the master"),
            ("redis+sentinel://h:1/m/x", "not a number"),
            ("redis+cluster://h:x", "port"),
            ("redis+cluster://h:1/0", "no path"),
            ("redis+cluster://u:%zz@h", "two hex digits"),
        ] {
            let e = parse_target(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn messages_never_show_the_password() {
        assert_eq!(
            redacted("rediss://app:s3cret@h:6380/0"),
            "rediss://app:***@h:6380/0"
        );
        assert_eq!(redacted("redis://:s3cret@h"), "redis://:***@h");
        assert_eq!(redacted("redis://app@h/1"), "redis://app@h/1");
        assert_eq!(
            redacted("redis+sentinel://:pw@a:1,b:2/m"),
            "redis+sentinel://:***@a:1,b:2/m"
        );
        assert_eq!(redacted("redis://h:1/a@b"), "redis://h:1/a@b");
    }
}
