//! What the connected ClickHouse server can do, decided from its version in
//! this one place. The product runs on the Debian 18.16 server of the dev
//! machine and on current releases (the compose image); where they differ,
//! the difference is named here and nowhere else.

/// Capabilities of one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerCaps {
    pub version: (u32, u32),
    /// The IPv4 column type (19.x+). Without it addresses are stored as String.
    pub ipv4: bool,
    /// SQL users and grants (`CREATE USER`, `GRANT`, 20.5+). Older servers
    /// define users in `users.xml` only.
    pub sql_access_control: bool,
    /// Inserts can declare their column types and the server compares them
    /// with the table's as it reads the block (`RowBinaryWithNamesAndTypes`
    /// with `input_format_with_types_use_header`, 21.12+): a batch encoded
    /// for other types is refused whole (code 117), atomically with any
    /// `ALTER`. Older servers read RowBinary with whatever types the columns
    /// have at that moment, so the sink reads the types right before each
    /// insert instead (see `flow_sink`), which leaves a window of about a
    /// millisecond.
    pub insert_checks_types: bool,
}

impl ServerCaps {
    /// From `SELECT version()`, e.g. "18.16.1" or "24.8.4.13".
    pub fn from_version(version: &str) -> Self {
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let major = parts.next().unwrap_or(0);
        let minor = parts.next().unwrap_or(0);
        let at_least = |ma: u32, mi: u32| (major, minor) >= (ma, mi);
        Self {
            version: (major, minor),
            ipv4: at_least(19, 1),
            sql_access_control: at_least(20, 5),
            insert_checks_types: at_least(21, 12),
        }
    }

    /// Placeholders the ClickHouse migrations may use, with this server's
    /// values: `{{ipv4}}` is the column type for IPv4 addresses.
    pub fn substitute(&self, sql: &str) -> String {
        sql.replace("{{ipv4}}", if self.ipv4 { "IPv4" } else { "String" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_and_new_servers() {
        let old = ServerCaps::from_version("18.16.1");
        assert!(!old.ipv4 && !old.sql_access_control && !old.insert_checks_types);
        assert!(!ServerCaps::from_version("21.11.11.1").insert_checks_types);
        assert!(ServerCaps::from_version("21.12.2.17").insert_checks_types);
        assert_eq!(old.substitute("ip {{ipv4}}"), "ip String");
        let new = ServerCaps::from_version("24.8.4.13");
        assert!(new.ipv4 && new.sql_access_control && new.insert_checks_types);
        assert_eq!(new.substitute("ip {{ipv4}}"), "ip IPv4");
    }
}
