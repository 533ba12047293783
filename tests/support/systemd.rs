//! A container with Debian's systemd as PID 1 (SYSTEMD_IMAGE, which
//! scripts/images.sh builds and names in `.env`) on the testcontainers
//! backend's network, with the units of deploy/systemd bound in unchanged
//! at /etc/systemd/system, this checkout's test build of the daemons (with
//! crash points) at /usr/local/bin, and a folder of the test's at
//! /etc/outbox-relay for the environment files, credentials and flows the
//! units read. Run as systemd needs in a container: CAP_SYS_ADMIN, tmpfs on
//! /run and /run/lock, /sys/fs/cgroup read-only (not --privileged).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use super::containers::{self, Containers, SESSION_LABEL, on_docker};

/// The units deploy/systemd ships.
pub const UNITS: [&str; 3] = ["outbox-relay", "outbox-sink", "outbox-stage"];

pub struct SystemdHost {
    container: Arc<ContainerAsync<GenericImage>>,
    /// The test's folder mounted at /etc/outbox-relay.
    pub etc: PathBuf,
}

fn binds(etc: &Path) -> anyhow::Result<Vec<String>> {
    let mut binds = vec!["/sys/fs/cgroup:/sys/fs/cgroup:ro".to_owned()];
    for unit in UNITS {
        let file = super::repo_path(&format!("deploy/systemd/{unit}.service"));
        let file = file
            .canonicalize()
            .with_context(|| format!("{}", file.display()))?;
        binds.push(format!(
            "{}:/etc/systemd/system/{unit}.service:ro",
            file.display()
        ));
    }
    for bin in ["relay", "sink", "stage"] {
        let path = super::daemon::binary(bin).canonicalize()?;
        binds.push(format!("{}:/usr/local/bin/{bin}:ro", path.display()));
    }
    binds.push(format!("{}:/etc/outbox-relay", etc.display()));
    Ok(binds)
}

impl SystemdHost {
    /// Boots a systemd container for test `label` on `c`'s network and
    /// waits until systemd says the boot is over.
    pub async fn boot(label: &str, c: &Containers) -> anyhow::Result<Self> {
        let image = super::compose::setting("SYSTEMD_IMAGE").context(
            "SYSTEMD_IMAGE is not set: scripts/images.sh builds the systemd image and names it in .env",
        )?;
        let etc = std::env::temp_dir().join(format!("outbox-{}-{label}-etc", c.session));
        let _ = std::fs::remove_dir_all(&etc);
        std::fs::create_dir_all(&etc)?;
        // The demo's flows and migrations, where the example env files say.
        std::fs::copy(outbox_demo::flows_file(), etc.join("flows.toml"))?;
        copy_dir(&outbox_demo::migrations_dir(), &etc.join("migrations"))?;
        let binds = binds(&etc)?;
        let (name, tag) = image.rsplit_once(':').unwrap_or((&image, "latest"));
        let request = GenericImage::new(name, tag)
            .with_container_name(format!("outbox-{}-systemd-{label}", c.session))
            .with_network(c.network.clone())
            .with_label(SESSION_LABEL, c.session.clone())
            .with_cap_add("SYS_ADMIN")
            .with_host_config_modifier(move |host| {
                host.tmpfs = Some(HashMap::from([
                    ("/run".to_owned(), String::new()),
                    ("/run/lock".to_owned(), String::new()),
                ]));
                host.binds = Some(binds.clone());
                host.publish_all_ports = Some(false);
                host.port_bindings = Some(HashMap::new());
            });
        let container = on_docker(move || async move {
            request
                .start()
                .await
                .with_context(|| format!("starting {image} (scripts/images.sh builds it)"))
        })
        .await?;
        let host = Self {
            container: Arc::new(container),
            etc,
        };
        let (_, state) = host
            // Its bus first (a moment after PID 1 starts), then the boot.
            .sh("i=0; until [ -S /run/systemd/private ] || [ $i -ge 300 ]; do sleep 0.2; i=$((i+1)); done; \
                 timeout 60 systemctl is-system-running --wait")
            .await?;
        let state = state.trim();
        if state != "running" {
            let (_, failed) = host.sh("systemctl --failed --no-legend").await?;
            bail!("systemd in the container is {state:?}, not running; failed units: {failed}");
        }
        Ok(host)
    }

    /// Runs `script` with sh in the container: (exit code, output).
    pub async fn sh(&self, script: &str) -> anyhow::Result<(i64, String)> {
        let container = Arc::clone(&self.container);
        let cmd = vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()];
        on_docker(move || async move { containers::exec(&container, &cmd).await }).await
    }

    /// Runs `script`, failing with its output unless it exits 0.
    pub async fn run(&self, script: &str) -> anyhow::Result<String> {
        let (code, out) = self.sh(script).await?;
        if code != 0 {
            bail!("`{script}` exited {code}: {}", out.trim());
        }
        Ok(out)
    }

    /// A property of `unit` (`systemctl show -p … --value`).
    pub async fn show(&self, unit: &str, property: &str) -> anyhow::Result<String> {
        Ok(self
            .run(&format!("systemctl show -p {property} --value {unit}"))
            .await?
            .trim()
            .to_owned())
    }

    /// What `unit` and its daemon logged, oldest first.
    pub async fn journal(&self, unit: &str) -> anyhow::Result<String> {
        self.run(&format!("journalctl --no-pager -o cat -u {unit}"))
            .await
    }

    /// Writes /etc/outbox-relay/`file`: the example `deploy/systemd/<example>`
    /// with each of `values` replacing the example's line of that name (or
    /// added), so the example's other settings stay as shipped.
    pub fn write_env(
        &self,
        file: &str,
        example: &str,
        values: &[(&str, String)],
    ) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(super::repo_path(&format!("deploy/systemd/{example}")))?;
        let mut lines: Vec<String> = Vec::new();
        let mut set: Vec<&str> = Vec::new();
        for line in text.lines() {
            let name = line.split_once('=').map(|(k, _)| k.trim());
            match name.and_then(|n| values.iter().find(|(k, _)| *k == n)) {
                Some((k, v)) => {
                    lines.push(format!("{k}={v}"));
                    set.push(k);
                }
                None => lines.push(line.to_owned()),
            }
        }
        for (k, v) in values {
            if !set.contains(k) {
                lines.push(format!("{k}={v}"));
            }
        }
        std::fs::write(self.etc.join(file), lines.join("\n") + "\n")?;
        Ok(())
    }

    /// Writes the credential /etc/outbox-relay/`name` (mode 0600, root's),
    /// as the operations page installs it.
    pub fn write_credential(&self, name: &str, value: &str) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.etc.join(name);
        std::fs::write(&path, format!("{value}\n"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(())
    }

    /// Polls `check` every 200 ms until it returns Ok(true), failing at the
    /// deadline with `what` and the last state seen.
    pub async fn wait<F, Fut>(
        &self,
        what: &str,
        within: Duration,
        mut check: F,
    ) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<Result<(), String>>>,
    {
        let deadline = std::time::Instant::now() + within;
        loop {
            let last = match check().await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(state)) => state,
                Err(e) => format!("error: {e:#}"),
            };
            if std::time::Instant::now() >= deadline {
                bail!("timed out after {within:?} waiting for {what}; last: {last}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for SystemdHost {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
