//! The pooled Postgres sessions of a daemon (`deadpool-postgres`): every
//! connection that is not a relay lane holding advisory locks or the
//! `LISTEN` connection — the relay's start-up check and backlog probe,
//! `status`, `replay`, `generate`, `migrate`, the sink's `reconcile`. Each
//! session has a connect timeout, TCP keepalives and a `statement_timeout`
//! (the `POSTGRES_*` settings), and the URL's TLS parameters apply exactly
//! as for every other connection (`pg`).

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, RecyclingMethod, Runtime};
use tokio_util::sync::CancellationToken;

use crate::pg::PgConnectError;
use flows::settings::{self, Env, SettingError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Sessions open at most.
    pub size: usize,
    /// A session must be connected (TCP, TLS, start-up) within this.
    pub connect_timeout: Duration,
    /// Every statement of a pooled session ends within this (server side).
    pub statement_timeout: Duration,
    /// TCP keepalives start after this much silence (then every 5 s, 3
    /// missed = dead).
    pub keepalive_idle: Duration,
}

impl PoolConfig {
    /// The `POSTGRES_*` settings.
    pub fn from_env(env: &Env) -> Result<Self, SettingError> {
        Ok(Self {
            size: usize::try_from(settings::POSTGRES_POOL_SIZE.get(env)?).unwrap_or(usize::MAX),
            connect_timeout: settings::POSTGRES_CONNECT_TIMEOUT_MS.get(env)?,
            statement_timeout: settings::POSTGRES_STATEMENT_TIMEOUT_MS.get(env)?,
            keepalive_idle: settings::POSTGRES_KEEPALIVE_IDLE_MS.get(env)?,
        })
    }
}

/// A pool of sessions on one database. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    pool: deadpool_postgres::Pool,
    url: String,
    connect_timeout: Duration,
}

/// A pooled session; derefs to `tokio_postgres::Client`.
pub type Session = Object;

impl Pool {
    /// Sets the pool up (no connection yet). A URL that cannot be parsed
    /// is an error here.
    pub fn new(url: &str, config: &PoolConfig) -> Result<Self, PgConnectError> {
        let (mut pg, tls) = crate::pg::config_and_tls(url)?;
        pg.connect_timeout(config.connect_timeout)
            .keepalives(true)
            .keepalives_idle(config.keepalive_idle)
            .keepalives_interval(crate::pg::KEEPALIVE_INTERVAL)
            .keepalives_retries(crate::pg::KEEPALIVE_RETRIES)
            .tcp_user_timeout(crate::pg::TCP_USER_TIMEOUT)
            .options(format!(
                "-c statement_timeout={}",
                config.statement_timeout.as_millis()
            ));
        let manager = Manager::from_config(
            pg,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(config.size)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .wait_timeout(Some(config.connect_timeout))
            .build()
            .map_err(|e| PgConnectError::Settings(e.to_string()))?;
        Ok(Self {
            pool,
            url: url.to_owned(),
            connect_timeout: config.connect_timeout,
        })
    }

    /// A session, or why there is none within the connect timeout.
    pub async fn get(&self) -> Result<Session, PgConnectError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Timeout(_) => {
                PgConnectError::Timeout(self.connect_timeout)
            }
            deadpool_postgres::PoolError::Backend(e) => PgConnectError::Postgres(e),
            other => PgConnectError::Settings(other.to_string()),
        })
    }

    /// A session, retrying with backoff while Postgres is unreachable, until
    /// `shutdown` (then `None`).
    pub async fn get_retrying(
        &self,
        purpose: &str,
        shutdown: &CancellationToken,
    ) -> Option<Session> {
        crate::pg::until_reachable(&self.url, purpose, shutdown, || self.get()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_and_defaults() {
        let cfg = PoolConfig::from_env(&Env::from_pairs([("POSTGRES_POOL_SIZE", "2")]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.size, 2);
        assert_eq!(cfg.connect_timeout, Duration::from_secs(10));
        let err = PoolConfig::from_env(&Env::from_pairs([("POSTGRES_CONNECT_TIMEOUT_MS", "soon")]));
        assert_eq!(
            err.err().map(|e| e.name),
            Some("POSTGRES_CONNECT_TIMEOUT_MS".into())
        );
    }

    #[tokio::test]
    async fn a_url_that_cannot_be_parsed_is_refused_at_set_up() {
        let cfg = PoolConfig::from_env(&Env::default()).unwrap_or_else(|e| panic!("{e}"));
        assert!(Pool::new("postgres://u:pw@h:notaport/db", &cfg).is_err());
        assert!(Pool::new("postgres://u:pw@h:5432/db", &cfg).is_ok());
    }
}
