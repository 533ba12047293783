//! `docs/settings.md`, written from the declarations (`table`): the
//! reference can only say what the daemons do. Regenerate it with
//! `cargo run -q -p flows --example settings-doc > docs/settings.md`;
//! `scripts/check-docs.sh` (CI) fails when the committed file differs.

use std::fmt::Write;

use super::setting::{Declared, Reader, Unset};
use super::table::GROUPS;
use crate::config_file;

/// The command that writes the reference, named in its header.
pub const COMMAND: &str = "cargo run -q -p flows --example settings-doc > docs/settings.md";

const INTRO: &str = "\
Every setting of `relay`, `sink` and `stage`. They come from the environment,
over an optional settings file (`--config FILE` on any command, or
`OUTBOX_CONFIG`), over the defaults below; an empty value counts as unset.

- A variable starting with one of a daemon's prefixes that the daemon does not
  read is refused as misspelt, and so is a value that does not parse (a URL
  or broker list included: a port that is not a number is a setting to fix,
  not a server to wait for): the command exits 2 with one line naming the
  setting (or the file's key), never echoing a secret.
- Secrets are never logged nor shown; each may instead be read from the file
  that `NAME_FILE` names (one trailing newline dropped; setting both is
  refused), and the settings file refuses them (use its `…_file` key).
- `relay config`, `sink config` and `stage config` print every setting of the
  daemon, one `NAME=value  # source` line each (`default`, `environment` or
  `file: relay.batch_size in FILE`), secrets as `***`.
- The settings file is TOML: a section is the prefix of the variables it sets
  and a key the rest of the name, lower-case (`[relay] batch_size = 500` is
  `RELAY_BATCH_SIZE`); the *file key* column below says where each goes, `—`
  when the file has none. Variables in the environment win over the file.
  An unknown section or top-level key exits 2 like a misspelt variable.

```toml
flows = [\"user_logins\", \"sales\"]        # FLOWS
database_url_file = \"/run/credentials/relay/database_url\"   # DATABASE_URL_FILE

[kafka]
brokers = \"kafka-1:9092,kafka-2:9092\"   # KAFKA_BROKERS

[relay]
batch_size = 5000                       # RELAY_BATCH_SIZE

[clickhouse]
url = \"http://clickhouse:8123\"          # CLICKHOUSE_URL
password_file = \"/run/credentials/sink/ch\"   # CLICKHOUSE_PASSWORD_FILE
```
";

const FIXED: &str = "\
## Fixed consumer settings

Not settable, but worth knowing (`connections/src/kafka.rs`, shared by the sink
and the stage): `session.timeout.ms=10000` (a killed sink's partitions move on
after 10 s), `queued.max.messages.kbytes=32768` (bounded prefetch, so memory
stays bounded at any backlog), `fetch.wait.max.ms=20` (Kafka's 500 ms default
would set the floor of end-to-end latency), `isolation.level=read_committed`.
";

/// The reference, as Markdown.
pub fn markdown() -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<!-- Generated from flows/src/settings/table.rs by `{COMMAND}`; do not edit. scripts/check-docs.sh (CI) fails when this file differs. -->"
    );
    out.push_str("\n# Settings\n\n");
    out.push_str(INTRO);
    out.push_str("\n## Who reads what\n\n");
    out.push_str("| daemon | refuses unknown variables starting with | reads |\n|---|---|---|\n");
    for reader in Reader::ALL {
        let prefixes: Vec<String> = reader.prefixes().iter().map(|p| format!("`{p}`")).collect();
        let groups: Vec<String> = GROUPS
            .iter()
            .filter(|g| g.settings.iter().any(|s| s.read_by().contains(&reader)))
            .map(|g| format!("[{}](#{})", g.title, anchor(g.title)))
            .collect();
        let _ = writeln!(
            out,
            "| `{}` | {} | {} |",
            reader.name(),
            prefixes.join(", "),
            groups.join(", ")
        );
    }
    for group in GROUPS {
        let _ = writeln!(out, "\n## {}\n\n{}\n", group.title, group.about);
        out.push_str("| variable | read by | kind | default | file key | meaning |\n");
        out.push_str("|---|---|---|---|---|---|\n");
        for setting in group.settings {
            row(&mut out, *setting);
        }
    }
    out.push('\n');
    out.push_str(FIXED);
    out
}

fn row(out: &mut String, setting: &dyn Declared) {
    let read_by = if setting.read_by().len() == Reader::ALL.len() {
        "all".to_owned()
    } else {
        let names: Vec<&str> = setting.read_by().iter().map(|r| r.name()).collect();
        names.join(", ")
    };
    let default = match setting.unset() {
        Unset::Default(shown) if shown.is_empty() => "empty".to_owned(),
        Unset::Default(shown) => format!("`{shown}`"),
        Unset::Required => "required".to_owned(),
        Unset::Means(means) => means.to_owned(),
    };
    let key = config_file::key(setting).map_or_else(|| "—".to_owned(), |k| format!("`{k}`"));
    let mut meaning = setting.doc().to_owned();
    if let Some(why) = setting.ignored_because() {
        let _ = write!(meaning, ": {why}");
    }
    if setting.secret() {
        let _ = write!(
            meaning,
            ". A secret: never shown; may instead come from the file `{}_FILE` names",
            setting.name()
        );
    }
    let _ = writeln!(
        out,
        "| `{}` | {read_by} | {} | {default} | {key} | {meaning} |",
        setting.name(),
        setting.kind()
    );
}

/// GitHub's anchor of a heading.
fn anchor(title: &str) -> String {
    title
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::table::all;
    use super::*;

    #[test]
    fn every_setting_has_a_row_with_its_default() {
        let text = markdown();
        for setting in all() {
            let row = text
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` |", setting.name())))
                .unwrap_or_else(|| panic!("no row for {}", setting.name()));
            if let Some(default) = setting.default_shown().filter(|d| !d.is_empty()) {
                assert!(row.contains(&format!("`{default}`")), "{row}");
            }
        }
        assert!(text.contains("| `RELAY_BATCH_SIZE` | relay | integer, 1 to 100000 | `10000` | `relay.batch_size` |"), "{text}");
        assert_eq!(anchor("Relay: Kafka producer"), "relay-kafka-producer");
    }

    #[test]
    fn the_settings_file_example_sets_declared_settings() {
        let example = INTRO
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .unwrap_or_default();
        let path =
            std::env::temp_dir().join(format!("outbox-doc-example-{}.toml", std::process::id()));
        std::fs::write(&path, example).unwrap_or_else(|e| panic!("{e}"));
        let read = config_file::read(&path).unwrap_or_else(|e| panic!("{e}"));
        let _ = std::fs::remove_file(&path);
        assert_eq!(read.len(), 6, "{read:?}");
        for setting in read {
            let name = setting.var.strip_suffix("_FILE").unwrap_or(&setting.var);
            assert!(super::super::table::find(name).is_some(), "{}", setting.var);
            // The comment names the variable.
            assert!(
                example.contains(&format!("# {}", setting.var)),
                "{}",
                setting.var
            );
        }
    }
}
