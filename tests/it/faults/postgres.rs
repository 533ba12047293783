//! Faults of Postgres: the relay's sessions terminated, the server
//! restarted (the shared one: see `scripts/test.sh`, which runs the fault
//! tests alone), the path to it black-holed.

use super::*;

/// Under load, every session of the test's database terminated
/// (pg_terminate_backend) ten times, then the shared Postgres server
/// restarted: the relay and the sink reconnect by themselves; every source
/// row in ClickHouse once under FINAL, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connection_terminated_and_server_restarted() -> anyhow::Result<()> {
    outbox_tests::stack::require_local("a Postgres server this machine restarts (pg_ctlcluster)")?;
    let _serial = SERIAL.lock().await;
    let stack = stack("f_postgres").await?;
    let metrics = Metrics::default();
    let running = vec![stack.spawn_relay(&metrics)?, stack.spawn_sink(&metrics)?];
    let load = Load::start(&stack, LOAD_ROWS_PER_SEC);
    let terminations = rounds(3, 10);
    let admin = stack.pg().await?;
    for _ in 0..terminations {
        tokio::time::sleep(Duration::from_millis(700)).await;
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .await?;
    }
    let recovering = Instant::now();
    load.stop().await;
    verify(
        &stack,
        "Postgres: relay connections terminated mid-batch",
        terminations,
        recovering,
        "pg_terminate_backend on every session of the database",
    )
    .await;

    let load = Load::start(&stack, LOAD_ROWS_PER_SEC);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarts = rounds(1, 3);
    for _ in 0..restarts {
        let version = std::fs::read_dir("/etc/postgresql")?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .max()
            .unwrap_or_default();
        let status = std::process::Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &version, "main", "restart"])
            .status()?;
        assert!(status.success(), "pg_ctlcluster restart");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let recovering = Instant::now();
    load.stop().await;
    verify(
        &stack,
        "Postgres server restarted",
        restarts,
        recovering,
        "pg_ctlcluster restart under load",
    )
    .await;
    for r in running {
        r.stop().await?;
    }
    Ok(())
}

/// `url` with its `host:port` replaced by `proxy`; and the address replaced.
fn through_proxy(
    url: &str,
) -> anyhow::Result<(
    std::net::SocketAddr,
    impl Fn(std::net::SocketAddr) -> String + '_,
)> {
    let start = url.find("://").context("a URL")? + 3;
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    let host_at = url[start..end].rfind('@').map_or(start, |i| start + i + 1);
    let upstream = std::net::ToSocketAddrs::to_socket_addrs(&url[host_at..end])?
        .next()
        .context("the database's address")?;
    Ok((upstream, move |proxy: std::net::SocketAddr| {
        format!("{}{proxy}{}", &url[..host_at], &url[end..])
    }))
}

/// The active relay's network path to Postgres black-holed: a proxy that
/// forwards nothing and closes nothing, so neither end sees a reset. The
/// server ends the cut-off sessions after `RELAY_SESSION_TIMEOUT_MS` and
/// the standby (direct path) takes over — within 60 s with the defaults;
/// the cut-off relay's queries time out (`RELAY_QUERY_TIMEOUT_MS`), and once
/// its path is back it stands by. Nothing lost, nothing doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_path_blackholed_the_standby_takes_over_within_a_minute() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let stack = stack("f_pg_blackhole").await?;
    let metrics = Metrics::default();
    let sink = stack.spawn_sink(&metrics)?;
    let (upstream, rewrite) = through_proxy(&stack.database_url)?;
    let proxy = Proxy::start(upstream).await?;
    let mut cut_off_env = stack.daemon_env();
    cut_off_env.retain(|(k, _)| k != "DATABASE_URL");
    cut_off_env.push(("DATABASE_URL".into(), rewrite(proxy.addr)));
    let load = Load::start(&stack, LOAD_ROWS_PER_SEC);
    let cut_off = Daemon::spawn("relay", &["run"], &cut_off_env, &label(&stack, "relay", 0));
    let log_of = |d: &Daemon| std::fs::read_to_string(&d.log).unwrap_or_default();
    wait_until(
        "the proxied relay active",
        Duration::from_secs(30),
        || async { Ok(log_of(&cut_off).contains("active relay for this flow")) },
    )
    .await;
    let standby = Daemon::spawn(
        "relay",
        &["run"],
        &stack.daemon_env(),
        &label(&stack, "relay", 1),
    );
    wait_until(
        "the other relay standing by",
        Duration::from_secs(30),
        || async { Ok(log_of(&standby).contains("standing by")) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.blackhole();
    let cut = Instant::now();
    wait_until(
        "the standby taking over",
        Duration::from_secs(60),
        || async { Ok(log_of(&standby).contains("active relay for this flow")) },
    )
    .await;
    let takeover = cut.elapsed();
    wait_until(
        "the cut-off relay's query deadline",
        Duration::from_secs(60),
        || async { Ok(log_of(&cut_off).contains("no answer to")) },
    )
    .await;
    let noticed = cut.elapsed();
    proxy.restore();
    wait_until(
        "the cut-off relay standing by once its path is back",
        Duration::from_secs(60),
        || async { Ok(log_of(&cut_off).contains("standing by")) },
    )
    .await;
    load.stop().await;
    let recovering = Instant::now();
    verify(
        &stack,
        "Postgres path of the active relay black-holed (packets dropped, no reset)",
        1,
        recovering,
        &format!(
            "standby took over after {:.1} s (defaults: session timeout 30 s); the cut-off relay's own deadline fired after {:.1} s",
            takeover.as_secs_f64(),
            noticed.as_secs_f64()
        ),
    )
    .await;
    assert!(
        takeover <= Duration::from_secs(60),
        "the standby publishes within 60 s ({takeover:?})"
    );
    sink.stop().await?;
    Ok(())
}
