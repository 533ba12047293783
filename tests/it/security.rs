//! Secure defaults: TLS to Postgres as libpq's `sslmode` means it, HTTPS
//! to ClickHouse verified against a CA file, secrets read from files and
//! never logged, and the daemons running with exactly the grants
//! `deploy/grants/` gives (README, "Least privilege").

use std::net::SocketAddr;
use std::time::Duration;

use daemon::metrics::Metrics;
use flows::Env;
use outbox_tests::daemon::run_to_exit;
use outbox_tests::tls_proxy::TlsProxy;
use outbox_tests::{Daemon, TestStack, wait_until};
use tokio_postgres::NoTls;

const ARRIVAL: Duration = Duration::from_secs(60);

/// Whether the session `url` opens is encrypted (asked of the server).
async fn encrypted(url: &str) -> anyhow::Result<bool> {
    let (client, connection) = connections::pg::connect_once(url).await?;
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// The server's certificate file when the server has TLS on and the file
/// is readable here (the same machine), else `None` (tests then say so).
async fn server_certificate(stack: &TestStack) -> anyhow::Result<Option<String>> {
    let pg = stack.pg().await?;
    let ssl: String = pg.query_one("SHOW ssl", &[]).await?.get(0);
    let cert: String = pg.query_one("SHOW ssl_cert_file", &[]).await?.get(0);
    Ok((ssl == "on" && std::fs::read(&cert).is_ok()).then_some(cert))
}

/// `url` with `host` instead of 127.0.0.1 and the query `params` added.
fn variant(url: &str, host: &str, params: &str) -> String {
    let url = url.replacen("@127.0.0.1:", &format!("@{host}:"), 1);
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

/// `disable` is plain, `prefer` (default) and `require` encrypt (asked of
/// `pg_stat_ssl`), `verify-full` accepts the server's certificate for
/// `localhost` and refuses it for `127.0.0.1`, an unrelated `sslrootcert`
/// is refused even where the system trusts the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tls_follows_libpq_sslmode() -> anyhow::Result<()> {
    let stack = TestStack::start("pg_tls").await?;
    let Some(cert) = server_certificate(&stack).await? else {
        anyhow::bail!(
            "this Postgres has TLS off or its certificate is not readable here: scripts/test.sh starts one with TLS on"
        );
    };
    let url = &stack.database_url;
    assert!(!encrypted(&variant(url, "127.0.0.1", "sslmode=disable")).await?);
    assert!(
        encrypted(url).await?,
        "the default (prefer) uses TLS when offered"
    );
    assert!(encrypted(&variant(url, "127.0.0.1", "sslmode=require")).await?);
    // The server's certificate names localhost (Debian's snakeoil one does).
    let full = format!("sslmode=verify-full&sslrootcert={cert}");
    assert!(encrypted(&variant(url, "localhost", &full)).await?);
    let wrong_host = encrypted(&variant(url, "127.0.0.1", &full)).await;
    assert!(wrong_host.is_err(), "verify-full checks the host name");
    // A root file names the only CAs trusted (libpq's sslrootcert), even
    // where the system's store would accept the server.
    let other_ca = std::env::temp_dir().join(format!("{}-other-ca.pem", stack.name));
    std::fs::write(
        &other_ca,
        outbox_tests::tls_proxy::self_signed()?.0.to_pem()?,
    )?;
    let untrusted = encrypted(&variant(
        url,
        "localhost",
        &format!("sslmode=verify-ca&sslrootcert={}", other_ca.display()),
    ))
    .await;
    let _ = std::fs::remove_file(&other_ca);
    let error = untrusted
        .err()
        .map_or_else(|| "connected".to_owned(), |e| format!("{e:#}"));
    assert!(error.contains("certificate verify failed"), "{error}");
    Ok(())
}

/// Relay and sink with `sslmode=verify-full` and `https://` through a TLS
/// proxy with its own CA (`CLICKHOUSE_CA_FILE`): every row arrives, every
/// relay session is encrypted; a client without the CA is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_travel_over_verified_tls_to_postgres_and_https_to_clickhouse() -> anyhow::Result<()> {
    let mut stack = TestStack::start("https").await?;
    let upstream: SocketAddr = stack
        .clickhouse_url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()?;
    let proxy = TlsProxy::start(upstream).await?;
    let ca = proxy.ca_file.display().to_string();
    stack.overrides.extend([
        (
            "CLICKHOUSE_URL".to_owned(),
            format!("https://localhost:{}", proxy.addr.port()),
        ),
        ("CLICKHOUSE_CA_FILE".to_owned(), ca.clone()),
    ]);
    let cert = server_certificate(&stack).await?;
    match &cert {
        Some(cert) => stack.overrides.push((
            "DATABASE_URL".to_owned(),
            variant(
                &stack.database_url,
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={cert}"),
            ),
        )),
        None => eprintln!("Postgres has TLS off here: only ClickHouse goes over TLS"),
    }
    stack.migrate().await?;
    let relay = stack.spawn_relay(&Metrics::default())?;
    let sink = stack.spawn_sink(&Metrics::default())?;
    stack
        .pg()
        .await?
        .batch_execute(
            "INSERT INTO user_logins (username, event_type, event_time)
             SELECT 'tls' || g, 'login', now() FROM generate_series(1, 200) g",
        )
        .await?;
    wait_until("200 rows in ClickHouse over HTTPS", ARRIVAL, || async {
        Ok(stack.ch_count_final("user_logins").await? == 200)
    })
    .await;
    assert!(proxy.sessions.load(std::sync::atomic::Ordering::SeqCst) > 0);
    if cert.is_some() {
        let sessions = stack
            .pg()
            .await?
            .query(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                 WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()",
                &[],
            )
            .await?;
        assert!(!sessions.is_empty(), "the relay's sessions are there");
        assert!(
            sessions.iter().all(|r| r.get::<_, bool>(0)),
            "every relay session is encrypted"
        );
    }

    // A client that does not trust the proxy's certificate is refused.
    let mut untrusting = sink::config::clickhouse_config(&Env::from_pairs(stack.daemon_env()))?;
    untrusting.ca_file = None;
    let refused = sink::clickhouse::client::client(&untrusting, None)
        .query("SELECT 1")
        .fetch_one::<u8>()
        .await;
    let error = format!("{:?}", refused.err());
    assert!(error.contains("certificate verify failed"), "{error}");
    relay.stop().await?;
    sink.stop().await
}

/// `sql` with the role and database names of `deploy/grants/` replaced.
fn grants(file: &str, replacements: &[(&str, &str)]) -> anyhow::Result<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/grants")
        .join(file);
    let mut sql = std::fs::read_to_string(path)?;
    for (from, to) in replacements {
        sql = sql.replace(from, to);
    }
    Ok(sql)
}

/// `deploy/grants/postgres.sql` run as is (names replaced): the `relay` and
/// `sink` binaries migrate (no DDL), deliver, set aside and replay under
/// those grants, `sink reconcile` runs as its read-only role; the relay
/// role cannot update other columns or delete; its URL comes from
/// `DATABASE_URL_FILE` and no log shows the password.
/// `deploy/grants/clickhouse.sql` runs where the server has SQL users
/// (20.5+; 18.16 here has not, said in the output).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemons_work_with_exactly_the_documented_grants() -> anyhow::Result<()> {
    let stack = TestStack::migrated("grants").await?;
    let (relay_role, reconcile_role) = (
        format!("{}_relay", stack.name),
        format!("{}_reconcile", stack.name),
    );
    let password = format!("pw-{}", rand::random::<u32>());
    let admin = stack.pg().await?;
    admin
        .batch_execute(&grants(
            "postgres.sql",
            &[
                ("outbox_relay", &relay_role),
                ("outbox_reconcile", &reconcile_role),
            ],
        )?)
        .await?;
    admin
        .batch_execute(&format!(
            "ALTER ROLE \"{relay_role}\" PASSWORD '{password}'"
        ))
        .await?;
    let role_url = |role: &str| {
        stack
            .database_url
            .replacen("postgres@", &format!("{role}:{password}@"), 1)
    };

    // The ClickHouse user, where the server has SQL users.
    let ch_version: String = stack.ch().query("SELECT version()").fetch_one().await?;
    let caps = sink::clickhouse::caps::ServerCaps::from_version(&ch_version);
    let mut env = stack.daemon_env();
    if caps.sql_access_control {
        let user = format!("{}_sink", stack.name);
        for statement in grants(
            "clickhouse.sql",
            &[
                ("outbox.*", &format!("`{}`.*", stack.name)),
                ("outbox_sink", &user),
                ("change-me", &password),
            ],
        )?
        .split(';')
        .map(|s| {
            s.lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|s| !s.trim().is_empty())
        {
            stack.ch().query(&statement).execute().await?;
        }
        env.push(("CLICKHOUSE_USER".to_owned(), user));
        env.push(("CLICKHOUSE_PASSWORD".to_owned(), password.clone()));
    } else {
        eprintln!(
            "ClickHouse {ch_version} has no SQL users (users.xml only): the sink runs as `default` here; \
             deploy/grants/clickhouse.sql is exercised on 20.5+"
        );
    }

    // The relay's URL (with its password) comes from a file, as with
    // systemd credentials or Docker secrets.
    let secret = std::env::temp_dir().join(format!("{}-database-url", stack.name));
    std::fs::write(&secret, format!("{}\n", role_url(&relay_role)))?;
    env.retain(|(k, _)| k != "DATABASE_URL");
    env.push(("DATABASE_URL_FILE".to_owned(), secret.display().to_string()));
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for daemon in ["relay", "sink"] {
        let (code, stderr) = run_to_exit(daemon, &["migrate"], &pairs);
        assert_eq!(
            code,
            Some(0),
            "{daemon} migrate as the least-privileged role runs no DDL: {stderr}"
        );
    }
    let mut relay = Daemon::spawn("relay", &["run"], &env, &format!("{}-relay", stack.name));
    let mut sink = Daemon::spawn("sink", &["run"], &env, &format!("{}-sink", stack.name));
    admin
        .batch_execute(
            "INSERT INTO user_logins (username, event_type, event_time)
             SELECT 'least' || g, 'login', now() FROM generate_series(1, 100) g",
        )
        .await?;
    wait_until(
        "100 rows delivered under least privilege",
        ARRIVAL,
        || async {
            Ok(stack.pending("user_logins").await? == 0
                && stack.ch_count_final("user_logins").await? == 100)
        },
    )
    .await;

    // Setting a row aside and replaying it work with these grants too.
    let (as_relay, connection) = tokio_postgres::connect(&role_url(&relay_role), NoTls).await?;
    tokio::spawn(connection);
    let flow = flows::settings::selected_flows(&Env::from_pairs(stack.daemon_env()))?.remove(0);
    let source = relay::source::OutboxSource::inspect(
        &as_relay,
        "user_logins",
        &flow.sources[0],
        relay::shard::Shard::WHOLE,
    )
    .await?;
    source
        .set_aside(
            &as_relay,
            "user_logins",
            &[(1, "{}", "set aside by the test")],
        )
        .await?;
    let mut as_relay = as_relay;
    assert_eq!(ops::replay::replay(&mut as_relay, &flow, None).await?, 1);
    // …and nothing more: the grants are the least, not merely enough.
    let denied = as_relay
        .execute("UPDATE user_logins SET username = 'x' WHERE id = 2", &[])
        .await;
    assert!(format!("{:?}", denied.err()).contains("permission denied"));
    let denied = as_relay
        .execute("DELETE FROM user_logins WHERE id = 2", &[])
        .await;
    assert!(format!("{:?}", denied.err()).contains("permission denied"));
    wait_until("the replayed row delivered again", ARRIVAL, || async {
        Ok(stack.pending("user_logins").await? == 0)
    })
    .await;

    // `sink reconcile` reads Postgres as its own role.
    let reconcile_url = role_url(&reconcile_role);
    let mut reconcile_env = pairs.clone();
    reconcile_env.retain(|(k, _)| *k != "DATABASE_URL_FILE");
    reconcile_env.push(("DATABASE_URL", &reconcile_url));
    let (code, stderr) = run_to_exit("sink", &["reconcile"], &reconcile_env);
    assert_eq!(code, Some(0), "{stderr}");

    assert_eq!(
        relay
            .terminate(Duration::from_secs(15))
            .and_then(|s| s.code()),
        Some(0)
    );
    assert_eq!(
        sink.terminate(Duration::from_secs(15))
            .and_then(|s| s.code()),
        Some(0)
    );
    for log in [&relay.log, &sink.log] {
        let text = std::fs::read_to_string(log)?;
        assert!(
            !text.contains(&password),
            "{} shows the password",
            log.display()
        );
    }
    let _ = std::fs::remove_file(&secret);
    for role in [&relay_role, &reconcile_role] {
        admin
            .batch_execute(&format!("DROP OWNED BY \"{role}\"; DROP ROLE \"{role}\""))
            .await?;
    }
    Ok(())
}

/// `DATABASE_URL_FILE` pointing nowhere: exit 2, one line naming the
/// variable.
#[test]
fn a_secret_file_that_cannot_be_read_exits_2_naming_it() {
    let (code, stderr) = run_to_exit(
        "relay",
        &["run"],
        &[
            ("DATABASE_URL_FILE", "/nonexistent/database-url"),
            ("KAFKA_BROKERS", "127.0.0.1:1"),
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.starts_with("relay: invalid setting DATABASE_URL_FILE: cannot read"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
