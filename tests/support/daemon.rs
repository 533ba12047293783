//! The real `relay` and `sink` binaries as child processes, for crash
//! (kill -9), signal and exit-code tests. `scripts/test.sh` builds them
//! before the tests run.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct Daemon {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

/// `target/<profile>/<name>`, next to the test binary's `deps/` folder:
/// built by `cargo build --workspace --bins` (scripts/test.sh), which has
/// the crash points (`--workspace` includes this crate, which turns them on).
pub fn binary(name: &str) -> PathBuf {
    let path = profile_dir().join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// `target/release/<name>`: a release build, without crash points (built by
/// `cargo build --release --bins`, as scripts/release-check.sh does).
pub fn release_binary(name: &str) -> PathBuf {
    let path = profile_dir()
        .parent()
        .map(|target| target.join("release").join(name))
        .unwrap_or_default();
    assert!(
        path.exists(),
        "{} not built: run `cargo build --release --bins` first (scripts/release-check.sh does)",
        path.display()
    );
    path
}

/// `target/<profile>`, the test binary's `deps/` folder's parent.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .and_then(|d| d.parent())
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn log_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .map_or_else(std::env::temp_dir, |d| d.join("test-logs"));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

impl Daemon {
    /// Starts `name args…` with exactly `env` (plus PATH, RUST_LOG from
    /// `DAEMON_LOG` and `KAFKA_DEBUG` when the test run has it), its output
    /// going to `target/<profile>/test-logs/<label>.log`.
    pub fn spawn(name: &str, args: &[&str], env: &[(String, String)], label: &str) -> Self {
        Self::spawn_binary(&binary(name), args, env, label)
    }

    /// [`Daemon::spawn`] of the binary at `path` (e.g. a release build's).
    pub fn spawn_binary(
        path: &std::path::Path,
        args: &[&str],
        env: &[(String, String)],
        label: &str,
    ) -> Self {
        let name = path.display();
        let log = log_dir().join(format!("{label}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
        let err = out.try_clone().unwrap_or_else(|e| panic!("log: {e}"));
        let child = Command::new(path)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "RUST_LOG",
                std::env::var("DAEMON_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(std::env::var("KAFKA_DEBUG").map(|d| ("KAFKA_DEBUG", d)))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            name: label.to_owned(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// kill -9: no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit status up to `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        self.wait_exit(timeout)
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Whether it is stopped (SIGSTOP, e.g. a `pause` crash point): state
    /// `T` in /proc.
    pub fn is_stopped(&self) -> bool {
        matches!(process_state(self.pid()), Some('T' | 't'))
    }

    /// Whether crash point `point` armed with `pause` stopped it there.
    pub fn paused_at(&self, point: &str) -> bool {
        self.log_text()
            .contains(&format!("failpoint {point}: pausing"))
            && self.is_stopped()
    }

    /// SIGCONT: a process stopped by a `pause` crash point goes on.
    pub fn resume(&self) -> anyhow::Result<()> {
        let resumed = Command::new("kill")
            .args(["-CONT", &self.pid().to_string()])
            .status()?;
        anyhow::ensure!(resumed.success(), "kill -CONT {}: {resumed}", self.name);
        Ok(())
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill9();
        }
    }
}

/// The state letter of process `pid` in /proc (`R`, `S`, `T` stopped,
/// `Z` a zombie …); `None` when it is gone.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Runs `name args…` to completion with exactly `env`; returns the exit code
/// and stderr.
pub fn run_to_exit(name: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let (code, _, stderr) = run_for_output(name, args, env);
    (code, stderr)
}

/// Runs `name args…` to completion with exactly `env`; returns the exit
/// code, stdout and stderr.
pub fn run_for_output(
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, String, String) {
    let out = Command::new(binary(name))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
