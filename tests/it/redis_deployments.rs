//! `redis-merge` against Redis as GitLab runs it: TLS with an ACL user and client certificates,
//! a master behind a sentinel, and a three-node cluster, each started from Debian's
//! `redis-server` on free local ports and stopped after. Each merge must leave GitLab's key
//! counting what `PFADD` of the union counts; a wrong password or an untrusted certificate is
//! exit 1 naming the URL without its secret.

use crate::redis::{pfadd, this_week};
use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server process of this test's own, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `redis-server` with `args` in `dir`.
fn server(dir: &Path, args: &[String]) -> Server {
    std::fs::create_dir_all(dir).unwrap();
    let child = Command::new("redis-server")
        .args(args)
        .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server runs (Debian's package redis-server; .ci/run installs it)");
    Server(child)
}

/// Retries `f` until it succeeds, for at most 20 seconds.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A CA, a certificate of 127.0.0.1 and localhost signed by it, a client certificate signed by
/// it, and another CA that signed nothing here, made with the `openssl` command.
struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    fn make(dir: &Path) -> Certificates {
        std::fs::create_dir_all(dir).unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl runs (Debian's package openssl)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for ca in ["ca", "other-ca"] {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=regtally test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
            ]);
        }
        // Extensions make version 3 certificates, the only version rustls reads.
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for (name, ext) in [
            ("server", Some("server.ext")),
            ("client", Some("client.ext")),
        ] {
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ]);
            let mut args = vec![
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &format!("{name}.crt"),
            ]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
            if let Some(ext) = ext {
                args.extend(["-extfile".to_owned(), ext.to_owned()]);
            }
            openssl(&args.iter().map(String::as_str).collect::<Vec<_>>());
        }
        Certificates {
            dir: dir.to_owned(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    fn pem(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(name)).unwrap()
    }
}

/// This week's push_tag key, and an export in `ws/redis` of 40 users with GitLab ids
/// 5000..5040 who pushed tags this week.
fn export(ws: &Workspace) -> String {
    let (monday, key, _) = this_week();
    let t = monday.format("%Y-%m-%dT00:30:00Z").to_string();
    let lines: Vec<String> = (0..40u64)
        .map(|u| {
            push(
                &format!("e{u}"),
                &t,
                "g/r",
                &format!("user{u}"),
                Some(5000 + u),
            )
        })
        .collect();
    ws.write_lines("logs/a.jsonl", &lines);
    let r = ws.run(&["logs"], "out", &["--redis", &ws.s("redis")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    key
}

/// GitLab's live counter before the merge: ids 5000..5010 and one of its own; and beside it
/// (same hash tag, so the same cluster slot) `PFADD` of the union the merge must give.
fn seed(con: &mut dyn redis::ConnectionLike, key: &str) {
    pfadd(con, key, &(5000..5010).chain([77]).collect::<Vec<_>>());
    pfadd(
        con,
        "{hll_counters}_expected",
        &(5000..5040).chain([77]).collect::<Vec<_>>(),
    );
}

/// The merge left the key counting what `PFADD` of the union counts.
fn assert_merged(con: &mut dyn redis::ConnectionLike, key: &str) {
    let got: u64 = redis::cmd("PFCOUNT").arg(key).query(con).unwrap();
    let want: u64 = redis::cmd("PFCOUNT")
        .arg("{hll_counters}_expected")
        .query(con)
        .unwrap();
    assert_eq!((got, want), (41, 41));
}

fn merge(ws: &Workspace, url: &str, extra: &[&str], env: &[(&str, String)]) -> Run {
    let mut args = vec!["redis-merge", "redis", "--url", url];
    args.extend_from_slice(extra);
    regtally_with(ws.dir.path(), &args, env)
}

#[test]
#[ignore = "needs redis-server and openssl on the PATH (Debian: apt-get install redis-server openssl)"]
fn tls_with_an_acl_user_and_a_client_certificate() {
    let ws = Workspace::new();
    let key = export(&ws);
    let certs = Certificates::make(&ws.path("certs"));
    let port = free_port();
    let _server = server(
        &ws.path("tls"),
        &[
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            certs.path("server.crt"),
            "--tls-key-file".into(),
            certs.path("server.key"),
            "--tls-ca-cert-file".into(),
            certs.path("ca.crt"),
            "--tls-auth-clients".into(),
            "yes".into(),
            // An ACL user for GitLab; the default user off.
            "--user".into(),
            "default".into(),
            "off".into(),
            "--user".into(),
            "gitlab".into(),
            "on".into(),
            ">s3cret".into(),
            "~*".into(),
            "&*".into(),
            "+@all".into(),
        ],
    );
    let url = format!("rediss://gitlab@127.0.0.1:{port}");
    let tls = redis::TlsCertificates {
        client_tls: Some(redis::ClientTlsConfig {
            client_cert: certs.pem("client.crt"),
            client_key: certs.pem("client.key"),
        }),
        root_cert: Some(certs.pem("ca.crt")),
    };
    let client =
        redis::Client::build_with_tls(format!("rediss://gitlab:s3cret@127.0.0.1:{port}"), tls)
            .unwrap();
    let mut con = eventually("the TLS server", || {
        client
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()
    });
    seed(&mut con, &key);
    let files = [
        "--redis-ca",
        &certs.path("ca.crt"),
        "--redis-cert",
        &certs.path("client.crt"),
        "--redis-key",
        &certs.path("client.key"),
    ]
    .map(str::to_owned);
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    let password = [("REGTALLY_TEST_REDIS_PASSWORD", "s3cret".to_owned())];
    let with_password = [
        &files[..],
        &["--password-env", "REGTALLY_TEST_REDIS_PASSWORD"],
    ]
    .concat();

    // A wrong password: exit 1, the URL named, the password not.
    let wrong = format!("rediss://gitlab:wr0ng@127.0.0.1:{port}");
    let r = merge(&ws, &wrong, &files, &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("rediss://gitlab:***@127.0.0.1:{port}")),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("wr0ng"), "{}", r.stderr);
    // A server whose certificate no trusted authority signed: the system's store, or a CA
    // that signed something else.
    let other_ca = certs.path("other-ca.crt");
    let other = [&["--redis-ca", other_ca.as_str()][..], &files[2..]].concat();
    let no_ca = &files[2..];
    for flags in [&other[..], no_ca] {
        let flags = [flags, &["--password-env", "REGTALLY_TEST_REDIS_PASSWORD"]].concat();
        let r = merge(&ws, &url, &flags, &password);
        assert_eq!(r.code, 1, "{flags:?}: {}", r.stderr);
        assert!(r.stderr.contains(&url), "{}", r.stderr);
        assert!(!r.stderr.contains("s3cret"), "{}", r.stderr);
    }
    // The server asks for a client certificate.
    let without_cert = [
        &files[..2],
        &["--password-env", "REGTALLY_TEST_REDIS_PASSWORD"],
    ]
    .concat();
    let r = merge(&ws, &url, &without_cert, &password);
    assert_eq!(r.code, 1, "{}", r.stderr);
    // Nothing has changed yet.
    let live: u64 = redis::cmd("PFCOUNT").arg(&key).query(&mut con).unwrap();
    assert_eq!(live, 11);

    let r = merge(&ws, &url, &with_password, &password);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("merged"), "{}", r.stdout);
    assert_merged(&mut con, &key);
}

#[test]
#[ignore = "needs redis-server on the PATH (Debian: apt-get install redis-server)"]
fn through_a_sentinel_to_its_master() {
    let ws = Workspace::new();
    let key = export(&ws);
    let (master_port, sentinel_port) = (free_port(), free_port());
    let _master = server(
        &ws.path("master"),
        &[
            "--port".into(),
            master_port.to_string(),
            "--requirepass".into(),
            "m4ster".into(),
        ],
    );
    let master_url = format!("redis://:m4ster@127.0.0.1:{master_port}");
    let mut con = eventually("the master", || {
        redis::Client::open(master_url.as_str())
            .ok()?
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()
    });
    seed(&mut con, &key);
    // The sentinel rewrites its configuration file: it lives in the sentinel's own folder.
    let dir = ws.path("sentinel");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("sentinel.conf"),
        format!(
            "port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor gitlab-redis 127.0.0.1 {master_port} 1\nsentinel auth-pass gitlab-redis m4ster\nrequirepass s3ntinel\n"
        ),
    )
    .unwrap();
    let _sentinel = Server(
        Command::new("redis-server")
            .args(["sentinel.conf", "--sentinel"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs as a sentinel"),
    );
    let sentinel_url = format!("redis://:s3ntinel@127.0.0.1:{sentinel_port}");
    eventually("the sentinel to know its master", || {
        let mut s = redis::Client::open(sentinel_url.as_str())
            .ok()?
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("gitlab-redis")
            .query(&mut s)
            .ok()?;
        addr.filter(|a| a.1 == master_port)
    });
    let env = [
        ("REGTALLY_TEST_MASTER", "m4ster".to_owned()),
        ("REGTALLY_TEST_SENTINEL", "s3ntinel".to_owned()),
    ];
    let url = format!("redis+sentinel://127.0.0.1:{sentinel_port}/gitlab-redis");
    let flags = [
        "--password-env",
        "REGTALLY_TEST_MASTER",
        "--sentinel-password-env",
        "REGTALLY_TEST_SENTINEL",
    ];
    // The sentinel refuses a client without its password.
    let r = merge(&ws, &url, &flags[..2], &env);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains(&url), "{}", r.stderr);
    let r = merge(&ws, &url, &flags, &env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("merged"), "{}", r.stdout);
    assert_merged(&mut con, &key);
}

#[test]
#[ignore = "needs redis-server and redis-cli on the PATH (Debian: apt-get install redis-server)"]
fn into_a_three_node_cluster() {
    let ws = Workspace::new();
    let key = export(&ws);
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let _nodes: Vec<Server> = ports
        .iter()
        .map(|p| {
            server(
                &ws.path(&format!("node-{p}")),
                &[
                    "--port".into(),
                    p.to_string(),
                    // A free port of its own for the cluster bus: the default, the port plus
                    // 10000, is past 65535 for a fifth of the ports the system hands out, and
                    // the node would not start.
                    "--cluster-port".into(),
                    free_port().to_string(),
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    "nodes.conf".into(),
                ],
            )
        })
        .collect();
    for p in &ports {
        eventually("a cluster node", || {
            redis::Client::open(format!("redis://127.0.0.1:{p}"))
                .ok()?
                .get_connection_with_timeout(Duration::from_secs(1))
                .ok()
        });
    }
    let mut create = Command::new("redis-cli");
    create.arg("--cluster").arg("create");
    for p in &ports {
        create.arg(format!("127.0.0.1:{p}"));
    }
    let out = create
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli runs (Debian's package redis-tools)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let nodes: Vec<String> = ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect();
    let client = redis::cluster::ClusterClient::new(nodes).unwrap();
    let mut con = eventually("the cluster", || {
        let mut c = client.get_connection().ok()?;
        let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut c).ok()?;
        info.contains("cluster_state:ok").then_some(c)
    });
    seed(&mut con, &key);
    // Two of the three nodes named: the client finds the third.
    let url = format!(
        "redis+cluster://127.0.0.1:{},127.0.0.1:{}",
        ports[0], ports[1]
    );
    let r = merge(&ws, &url, &["--dry-run"], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("dry run"), "{}", r.stdout);
    let live: u64 = redis::cmd("PFCOUNT").arg(&key).query(&mut con).unwrap();
    assert_eq!(live, 11);
    let r = merge(&ws, &url, &[], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("merged"), "{}", r.stdout);
    assert_merged(&mut con, &key);
}
