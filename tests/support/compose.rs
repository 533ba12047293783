//! docker-compose.yml as the one description of Postgres, Kafka and
//! ClickHouse: the testcontainers backend starts each service with the
//! image, environment, command, ports, health check and limits the compose
//! file gives it, read as Compose reads them — `${NAME:-default}` from the
//! caller's values, then the environment, then the repository's `.env`
//! (where scripts/images.sh names the local images), then the default.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use yaml_rust2::{Yaml, YamlLoader};

/// One service of docker-compose.yml, its values interpolated.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    /// `name:tag` (`latest` when the file gives no tag).
    pub image: String,
    pub environment: Vec<(String, String)>,
    pub command: Option<Vec<String>>,
    /// The health check as a command to run in the container (`CMD-SHELL`
    /// becomes `sh -c …`); None without one.
    pub healthcheck: Option<Vec<String>>,
    pub ports: Vec<Port>,
    /// (name, soft, hard)
    pub ulimits: Vec<(String, i64, i64)>,
}

/// A published port: `host_ip:host_port:container_port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub host_ip: String,
    pub host_port: u16,
    pub container_port: u16,
}

impl Service {
    /// The image's name and tag apart (a registry's port is not a tag).
    pub fn image_name_and_tag(&self) -> (String, String) {
        let slash = self.image.rfind('/').map_or(0, |i| i + 1);
        match self.image[slash..].rfind(':') {
            Some(colon) => (
                self.image[..slash + colon].to_owned(),
                self.image[slash + colon + 1..].to_owned(),
            ),
            None => (self.image.clone(), "latest".to_owned()),
        }
    }

    /// The value of an environment variable the service is given.
    pub fn env(&self, name: &str) -> Option<&str> {
        self.environment
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The repository's docker-compose.yml.
pub fn compose_file() -> std::path::PathBuf {
    super::repo_path("docker-compose.yml")
}

/// Service `name` of docker-compose.yml, with `vars` first in the
/// interpolation (e.g. the host ports a test picked).
pub fn service(name: &str, vars: &[(&str, String)]) -> anyhow::Result<Service> {
    let path = compose_file();
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let lookup = Lookup::new(vars);
    parse_service(&text, name, &|var| lookup.get(var))
        .with_context(|| format!("service {name} of {}", path.display()))
}

/// A setting as compose would see it: the environment, then `.env` (e.g.
/// SYSTEMD_IMAGE, which scripts/images.sh writes there).
pub fn setting(name: &str) -> Option<String> {
    Lookup::new(&[]).get(name).filter(|v| !v.is_empty())
}

/// Interpolation values: the caller's, the environment, `.env`.
struct Lookup {
    vars: BTreeMap<String, String>,
    dotenv: BTreeMap<String, String>,
}

impl Lookup {
    fn new(vars: &[(&str, String)]) -> Self {
        let dotenv = std::fs::read_to_string(super::repo_path(".env"))
            .map(|text| parse_dotenv(&text))
            .unwrap_or_default();
        Self {
            vars: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            dotenv,
        }
    }

    fn get(&self, name: &str) -> Option<String> {
        self.vars
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
            .or_else(|| self.dotenv.get(name).cloned())
    }
}

/// `NAME=value` lines of a `.env` file (comments and blank lines skipped).
pub fn parse_dotenv(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Compose's interpolation: `$$` is a dollar, `${NAME}` and `$NAME` the
/// value (empty when unset), `${NAME:-default}` the default when unset or
/// empty, `${NAME-default}` when unset.
pub fn interpolate(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(braced) = rest.strip_prefix('{') {
            let end = braced
                .find('}')
                .with_context(|| format!("unclosed ${{ in {text:?}"))?;
            let expr = &braced[..end];
            rest = &braced[end + 1..];
            let value = if let Some((name, default)) = expr.split_once(":-") {
                lookup(name)
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| default.to_owned())
            } else if let Some((name, default)) = expr.split_once('-') {
                lookup(name).unwrap_or_else(|| default.to_owned())
            } else {
                lookup(expr).unwrap_or_default()
            };
            out.push_str(&value);
        } else {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if len == 0 {
                bail!("a lone $ in {text:?} (write $$ for a dollar)");
            }
            out.push_str(&lookup(&rest[..len]).unwrap_or_default());
            rest = &rest[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn scalar(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn strings(value: &Yaml, what: &str) -> anyhow::Result<Vec<String>> {
    match value {
        Yaml::Array(items) => items
            .iter()
            .map(|v| scalar(v).with_context(|| format!("{what}: {v:?} is not a value")))
            .collect(),
        other => scalar(other)
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .with_context(|| format!("{what}: {other:?} is neither a list nor a value")),
    }
}

/// A mapping's entries with YAML merge keys (`<<: *anchor`, `<<: [*a, *b]`)
/// expanded; the mapping's own entries win.
fn merged(map: &yaml_rust2::yaml::Hash) -> anyhow::Result<Vec<(String, String)>> {
    let mut own = Vec::new();
    let mut inherited = Vec::new();
    for (k, v) in map {
        let key = scalar(k).context("a mapping key")?;
        if key != "<<" {
            own.push((key, scalar(v).unwrap_or_default()));
            continue;
        }
        let sources = match v {
            Yaml::Array(items) => items.iter().collect(),
            one => vec![one],
        };
        for source in sources {
            let Yaml::Hash(inner) = source else {
                bail!("<< merges {source:?}, not a mapping");
            };
            for entry in merged(inner)? {
                if !inherited
                    .iter()
                    .any(|(k, _): &(String, String)| *k == entry.0)
                {
                    inherited.push(entry);
                }
            }
        }
    }
    inherited.retain(|(k, _)| !own.iter().any(|(o, _)| o == k));
    inherited.extend(own);
    Ok(inherited)
}

/// Parses service `name` out of a compose file's text.
pub fn parse_service(
    text: &str,
    name: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Service> {
    let docs = YamlLoader::load_from_str(text).context("not YAML")?;
    let doc = docs.first().context("an empty file")?;
    let svc = &doc["services"][name];
    if svc.is_badvalue() {
        bail!("no such service");
    }
    let get = |v: &str| interpolate(v, lookup);
    let image = get(&scalar(&svc["image"]).context("no image")?)?;
    let mut environment = Vec::new();
    match &svc["environment"] {
        Yaml::Hash(map) => {
            for (key, value) in merged(map)? {
                environment.push((key, get(&value)?));
            }
        }
        Yaml::Array(items) => {
            for item in items {
                let line = scalar(item).context("an environment entry")?;
                let (k, v) = line.split_once('=').unwrap_or((&line, ""));
                environment.push((k.to_owned(), get(v)?));
            }
        }
        Yaml::BadValue => {}
        other => bail!("environment: {other:?}"),
    }
    let command = match &svc["command"] {
        Yaml::BadValue => None,
        value => Some(
            strings(value, "command")?
                .iter()
                .map(|s| get(s))
                .collect::<anyhow::Result<_>>()?,
        ),
    };
    let healthcheck = match &svc["healthcheck"]["test"] {
        Yaml::BadValue => None,
        Yaml::String(shell) => Some(vec!["sh".into(), "-c".into(), get(shell)?]),
        value => {
            let test = strings(value, "healthcheck.test")?;
            match test.first().map(String::as_str) {
                Some("CMD-SHELL") => {
                    Some(vec!["sh".into(), "-c".into(), get(&test[1..].join(" "))?])
                }
                Some("CMD") => Some(
                    test[1..]
                        .iter()
                        .map(|s| get(s))
                        .collect::<anyhow::Result<_>>()?,
                ),
                Some("NONE") | None => None,
                Some(other) => bail!("healthcheck.test starts with {other:?}"),
            }
        }
    };
    let mut ports = Vec::new();
    if let Yaml::Array(items) = &svc["ports"] {
        for item in items {
            ports.push(parse_port(&get(&scalar(item).context("a port")?)?)?);
        }
    }
    let mut ulimits = Vec::new();
    if let Yaml::Hash(map) = &svc["ulimits"] {
        for (k, v) in map {
            let key = scalar(k).context("a ulimit name")?;
            // A number, or `${NAME:-number}` (interpolated, then read).
            let number = |v: &Yaml, what: &str| -> anyhow::Result<i64> {
                match v {
                    Yaml::Integer(n) => Ok(*n),
                    Yaml::String(text) => {
                        let text = get(text)?;
                        text.trim()
                            .parse()
                            .with_context(|| format!("ulimit {key} {what} {text:?}"))
                    }
                    _ => bail!("ulimit {key} {what} is not a number"),
                }
            };
            let (soft, hard) = match v {
                Yaml::Hash(_) => (number(&v["soft"], "soft")?, number(&v["hard"], "hard")?),
                n => (number(n, "limit")?, number(n, "limit")?),
            };
            ulimits.push((key, soft, hard));
        }
    }
    Ok(Service {
        name: name.to_owned(),
        image,
        environment,
        command,
        healthcheck,
        ports,
        ulimits,
    })
}

/// `[ip:]host:container` (a lone container port is published on a port
/// Docker picks: not used here).
fn parse_port(spec: &str) -> anyhow::Result<Port> {
    let parts: Vec<&str> = spec.trim_end_matches("/tcp").split(':').collect();
    let (host_ip, host, container) = match parts.as_slice() {
        [ip, host, container] => (*ip, *host, *container),
        [host, container] => ("0.0.0.0", *host, *container),
        _ => bail!("port {spec:?}: give host and container ports"),
    };
    Ok(Port {
        host_ip: host_ip.to_owned(),
        host_port: host.parse().with_context(|| format!("port {spec:?}"))?,
        container_port: container
            .parse()
            .with_context(|| format!("port {spec:?}"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
x-env: &env
  SHARED: "yes"
services:
  db:
    image: ${DB_IMAGE:-postgres:16}
    command: ["postgres", "-c", "a=$$b"]
    environment:
      <<: *env
      PASSWORD: ${PASSWORD:-secret}
      ID: 1
    ports: ["${BIND:-127.0.0.1}:${PORT:-5432}:5432"]
    healthcheck:
      test: ["CMD-SHELL", "pg_isready -U ${USER_NAME-postgres}"]
    ulimits:
      nofile: {soft: 10, hard: "${NOFILE:-20}"}
"#;

    #[test]
    fn a_service_reads_as_compose_reads_it() -> anyhow::Result<()> {
        let vars = |name: &str| match name {
            "PORT" => Some("15432".to_owned()),
            "DB_IMAGE" => Some(String::new()),
            _ => None,
        };
        let s = parse_service(FILE, "db", &vars)?;
        assert_eq!(
            s.image, "postgres:16",
            "an empty value takes the :- default"
        );
        assert_eq!(
            s.image_name_and_tag(),
            ("postgres".to_owned(), "16".to_owned())
        );
        assert_eq!(
            s.command.as_deref(),
            Some(&["postgres".to_owned(), "-c".into(), "a=$b".into()][..])
        );
        assert_eq!(s.env("PASSWORD"), Some("secret"));
        assert_eq!(s.env("ID"), Some("1"));
        assert_eq!(s.env("SHARED"), Some("yes"), "merged from the anchor");
        assert_eq!(s.env("<<"), None);
        assert_eq!(
            s.ports,
            [Port {
                host_ip: "127.0.0.1".into(),
                host_port: 15432,
                container_port: 5432
            }]
        );
        assert_eq!(
            s.healthcheck.as_deref(),
            Some(
                &[
                    "sh".to_owned(),
                    "-c".into(),
                    "pg_isready -U postgres".into()
                ][..]
            )
        );
        assert_eq!(
            s.ulimits,
            [("nofile".to_owned(), 10, 20)],
            "a number, or one interpolated"
        );
        assert!(parse_service(FILE, "nope", &vars).is_err());
        let nofile = |name: &str| (name == "NOFILE").then(|| "4096".to_owned());
        assert_eq!(
            parse_service(FILE, "db", &nofile)?.ulimits,
            [("nofile".to_owned(), 10, 4096)]
        );
        let bad = |name: &str| (name == "NOFILE").then(|| "lots".to_owned());
        assert!(parse_service(FILE, "db", &bad).is_err(), "not a number");
        Ok(())
    }

    #[test]
    fn registry_ports_are_not_tags() {
        let s = |image: &str| Service {
            name: String::new(),
            image: image.into(),
            environment: vec![],
            command: None,
            healthcheck: None,
            ports: vec![],
            ulimits: vec![],
        };
        assert_eq!(
            s("registry:5000/team/kafka").image_name_and_tag(),
            ("registry:5000/team/kafka".to_owned(), "latest".to_owned())
        );
        assert_eq!(
            s("outbox-local/kafka:4.1.1").image_name_and_tag(),
            ("outbox-local/kafka".to_owned(), "4.1.1".to_owned())
        );
    }

    #[test]
    fn dotenv_lines() {
        let env = parse_dotenv("# c\n\nA=1\n B = two \nbad\n");
        assert_eq!(env.get("A").map(String::as_str), Some("1"));
        assert_eq!(env.get("B").map(String::as_str), Some("two"));
        assert_eq!(env.len(), 2);
    }
}
