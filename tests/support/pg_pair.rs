//! A Postgres primary with one streaming standby (`pg_basebackup -R`), two
//! servers of this machine's Postgres binaries on loopback ports, in a
//! directory of their own: what the failover tests kill (kill -9 of the
//! postmaster) and promote (`pg_ctl promote`). Started as the `postgres`
//! user when the tests run as root (initdb refuses root), removed on drop.
//!
//! The binaries: `TEST_PG_BINDIR`, else the newest
//! `/usr/lib/postgresql/*/bin` (Debian's layout, which scripts/lib.sh
//! installs). Missing binaries fail the test, naming what is missing.
//! `TEST_KEEP_PG_PAIR=1` keeps the servers' directories and logs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio_postgres::NoTls;

use super::daemon::process_state;
use super::http::free_port;

/// How the primary waits for its standby at commit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Replication {
    /// `synchronous_standby_names` names the standby and
    /// `synchronous_commit=on`: a commit returns (and its rows become
    /// visible) only once the standby has the commit on disk.
    Synchronous,
    /// Postgres's default: the standby follows when it can.
    Asynchronous,
}

/// One of the two servers.
struct Server {
    dir: PathBuf,
    port: u16,
}

/// The pair; `servers[primary]` is the current primary.
pub struct PgPair {
    root: PathBuf,
    bin: PathBuf,
    servers: [Server; 2],
    primary: usize,
    replication: Replication,
}

/// The standby's name, as the primary's `synchronous_standby_names` asks.
const STANDBY_NAME: &str = "standby";

fn bindir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("TEST_PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context(
            "no /usr/lib/postgresql: install Postgres (scripts/test.sh does) or set TEST_PG_BINDIR",
        )?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .context("no initdb under /usr/lib/postgresql/*/bin: set TEST_PG_BINDIR")
}

/// Whether this process is root (the servers then run as `postgres`).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

impl PgPair {
    /// initdb, the primary started, the standby cloned from it and started,
    /// streaming. Database `outbox` created on the primary.
    pub async fn start(name: &str, replication: Replication) -> anyhow::Result<Self> {
        let bin = bindir()?;
        let root = std::env::temp_dir().join(format!("outbox-pgpair-{name}"));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root)?;
        let ports = [free_port()?, free_port()?];
        let servers = [0, 1].map(|i| Server {
            dir: root.join(format!("pg{i}")),
            port: ports[i],
        });
        let pair = Self {
            root,
            bin,
            servers,
            primary: 0,
            replication,
        };
        if is_root() {
            pair.shell(
                "chown",
                &["-R", "postgres:postgres", &pair.root.display().to_string()],
            )?;
        }
        pair.init_primary()?;
        pair.clone_standby(1)?;
        pair.admin()
            .await?
            .batch_execute("CREATE DATABASE outbox")
            .await?;
        pair.wait_streaming().await?;
        Ok(pair)
    }

    /// Runs a Postgres binary as the servers' owner.
    fn pg(&self, tool: &str, args: &[&str]) -> anyhow::Result<String> {
        let path = self.bin.join(tool);
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let out = command
            .args(args)
            .current_dir(&self.root)
            .output()
            .with_context(|| format!("running {}", path.display()))?;
        if !out.status.success() {
            bail!(
                "{tool} {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn shell(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let status = Command::new(program).args(args).status()?;
        anyhow::ensure!(status.success(), "{program} {}: {status}", args.join(" "));
        Ok(())
    }

    fn dir(&self, i: usize) -> String {
        self.servers[i].dir.display().to_string()
    }

    fn init_primary(&self) -> anyhow::Result<()> {
        let dir = self.dir(self.primary);
        self.pg(
            "initdb",
            &[
                "-D",
                &dir,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        let sync = match self.replication {
            Replication::Synchronous => format!("synchronous_standby_names = '{STANDBY_NAME}'\n"),
            Replication::Asynchronous => String::new(),
        };
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nunix_socket_directories = '{root}'\n\
             wal_level = replica\nmax_wal_senders = 5\nhot_standby = on\n\
             fsync = off\nshared_buffers = 32MB\nmax_connections = 60\n{sync}",
            root = self.root.display()
        );
        append(&Path::new(&dir).join("postgresql.conf"), &conf)?;
        append(
            &Path::new(&dir).join("pg_hba.conf"),
            "host replication all 127.0.0.1/32 trust\n",
        )?;
        self.start_server(self.primary)
    }

    /// `pg_basebackup -R` of the primary into server `i`, started as its
    /// streaming standby (named [`STANDBY_NAME`]).
    fn clone_standby(&self, i: usize) -> anyhow::Result<()> {
        let dir = self.dir(i);
        let _ = std::fs::remove_dir_all(&dir);
        self.pg(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.servers[self.primary].port.to_string(),
                "-U",
                "postgres",
                "-D",
                &dir,
                "-R",
                "-X",
                "stream",
                // An immediate checkpoint: a just-promoted primary is still
                // in its spread end-of-recovery one (minutes).
                "--checkpoint=fast",
                "--no-sync",
            ],
        )?;
        let conf = Path::new(&dir).join("postgresql.auto.conf");
        // Its own port; the name the primary's synchronous_standby_names
        // asks for (the walreceiver's application_name is cluster_name).
        append(
            &conf,
            &format!(
                "port = {}\ncluster_name = '{STANDBY_NAME}'\n",
                self.servers[i].port
            ),
        )?;
        self.start_server(i)
    }

    fn start_server(&self, i: usize) -> anyhow::Result<()> {
        let dir = self.dir(i);
        let log = format!("{dir}.log");
        let port = format!("-p {}", self.servers[i].port);
        let args = [
            "-D", &dir, "-l", &log, "-o", &port, "-w", "-t", "60", "start",
        ];
        self.pg("pg_ctl", &args).map_err(|e| {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let mut tail: Vec<&str> = text.lines().rev().take(15).collect();
            tail.reverse();
            e.context(format!("its log ends:\n{}", tail.join("\n")))
        })?;
        Ok(())
    }

    /// The multi-host URL the daemons and the load use: both servers,
    /// `target_session_attrs=read-write` (whichever is the primary).
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/outbox?target_session_attrs=read-write&sslmode=disable",
            self.servers[0].port, self.servers[1].port
        )
    }

    fn url_of(&self, i: usize, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.servers[i].port
        )
    }

    /// The standby alone (no `target_session_attrs`): a relay pointed at a
    /// read-only server.
    pub fn standby_url(&self) -> String {
        self.url_of(1 - self.primary, "outbox")
    }

    /// A session on the current primary's `postgres` database.
    async fn admin(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (admin, conn) =
            tokio_postgres::connect(&self.url_of(self.primary, "postgres"), NoTls).await?;
        tokio::spawn(conn);
        Ok(admin)
    }

    /// Waits until the primary sees its standby streaming (and, when
    /// synchronous, as its synchronous standby).
    pub async fn wait_streaming(&self) -> anyhow::Result<()> {
        let admin = self.admin().await?;
        let want = match self.replication {
            Replication::Synchronous => "sync",
            Replication::Asynchronous => "async",
        };
        for _ in 0..600 {
            let rows = admin
                .query(
                    "SELECT sync_state FROM pg_stat_replication WHERE state = 'streaming'",
                    &[],
                )
                .await?;
            if rows.iter().any(|r| r.get::<_, String>(0) == want) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the standby is not streaming ({want}) after 60 s")
    }

    /// Waits until the standby has replayed everything the primary wrote.
    pub async fn wait_replayed(&self) -> anyhow::Result<()> {
        let admin = self.admin().await?;
        for _ in 0..600 {
            let caught_up: bool = admin
                .query_one(
                    "SELECT coalesce(bool_and(replay_lsn >= pg_current_wal_lsn()), false) FROM pg_stat_replication",
                    &[],
                )
                .await?
                .get(0);
            if caught_up {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the standby has not replayed the primary's WAL after 60 s")
    }

    fn postmaster_pid(&self, i: usize) -> anyhow::Result<u32> {
        let pid_file = self.servers[i].dir.join("postmaster.pid");
        let text = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("reading {}", pid_file.display()))?;
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .context("postmaster.pid without a pid")
    }

    /// kill -9 of the primary's postmaster; waits until it is gone and its
    /// port refuses connections (its backends exit on their own once the
    /// postmaster is dead).
    pub fn kill_primary(&self) -> anyhow::Result<()> {
        let pid = self.postmaster_pid(self.primary)?;
        self.shell("kill", &["-9", &pid.to_string()])?;
        let port = self.servers[self.primary].port;
        for _ in 0..600 {
            // Gone, or a zombie nobody reaps (pg_ctl, its parent, exited).
            let gone = matches!(process_state(pid), None | Some('Z'));
            let refused = std::net::TcpStream::connect(("127.0.0.1", port)).is_err();
            if gone && refused {
                // A zombie not yet reaped still "holds" the socket's lock
                // file, which would stop a server started on this port.
                for file in [format!(".s.PGSQL.{port}.lock"), format!(".s.PGSQL.{port}")] {
                    let _ = std::fs::remove_file(self.root.join(file));
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("the killed primary (pid {pid}) still answers on {port} after 60 s")
    }

    /// `pg_ctl promote` of the standby, waited for: it is the primary now.
    /// A synchronous pair's new primary stops waiting for a standby it no
    /// longer has (as a failover tool does — Patroni's `synchronous_mode`
    /// without `_strict`), or it would hold every commit until
    /// [`Self::rebuild_standby`].
    pub async fn promote(&mut self) -> anyhow::Result<()> {
        let standby = 1 - self.primary;
        self.pg(
            "pg_ctl",
            &["-D", &self.dir(standby), "-w", "-t", "60", "promote"],
        )?;
        self.primary = standby;
        if self.replication == Replication::Synchronous {
            self.set_synchronous_names("").await?;
        }
        Ok(())
    }

    async fn set_synchronous_names(&self, names: &str) -> anyhow::Result<()> {
        let admin = self.admin().await?;
        admin
            .batch_execute(&format!(
                "ALTER SYSTEM SET synchronous_standby_names = '{names}'"
            ))
            .await?;
        admin.batch_execute("SELECT pg_reload_conf()").await?;
        Ok(())
    }

    /// Stops the standby (fast shutdown): the primary writes on without it
    /// (only with [`Replication::Asynchronous`]; a synchronous primary would
    /// wait).
    pub fn stop_standby(&self) -> anyhow::Result<()> {
        self.pg(
            "pg_ctl",
            &[
                "-D",
                &self.dir(1 - self.primary),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        )?;
        Ok(())
    }

    /// Starts the standby again (it was stopped by [`Self::stop_standby`]).
    pub fn start_standby(&self) -> anyhow::Result<()> {
        self.start_server(1 - self.primary)
    }

    /// After a failover: the dead old primary made a standby of the new one
    /// (a fresh `pg_basebackup`), so the pair can fail over again.
    pub async fn rebuild_standby(&self) -> anyhow::Result<()> {
        self.clone_standby(1 - self.primary)?;
        if self.replication == Replication::Synchronous {
            self.set_synchronous_names(STANDBY_NAME).await?;
        }
        self.wait_streaming().await
    }
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

impl Drop for PgPair {
    fn drop(&mut self) {
        for i in 0..2 {
            if self.servers[i].dir.join("postmaster.pid").exists() {
                let _ = self.pg(
                    "pg_ctl",
                    &["-D", &self.dir(i), "-m", "immediate", "-w", "stop"],
                );
            }
        }
        if std::env::var_os("TEST_KEEP_PG_PAIR").is_none() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}
