//! TLS and SASL to a real broker (scripts/kafka-lib.sh's listeners, with
//! the CA and users it generated): relay, sink and stage deliver over each
//! listener; wrong credentials and untrusted certificates stop a daemon at
//! start-up with exit code 2 and one line naming the setting, never the
//! secret.

use std::time::Duration;

use daemon::metrics::Metrics;
use outbox_tests::broker::{Secure, secure};
use outbox_tests::daemon::run_to_exit;
use outbox_tests::{TestStack, wait_until};

const ARRIVAL: Duration = Duration::from_secs(40);

/// The security variables of one way in.
fn mode(s: &Secure, name: &str) -> Vec<(&'static str, String)> {
    let tls = |brokers: &str, protocol: &str| {
        vec![
            ("KAFKA_BROKERS", brokers.to_owned()),
            ("KAFKA_SECURITY_PROTOCOL", protocol.to_owned()),
            ("KAFKA_SSL_CA_LOCATION", s.ca.clone()),
        ]
    };
    let sasl = |mechanism: &str| {
        let mut v = tls(&s.sasl_ssl, "sasl_ssl");
        v.push(("KAFKA_SASL_MECHANISM", mechanism.to_owned()));
        v.push(("KAFKA_SASL_USERNAME", s.user.clone()));
        v.push(("KAFKA_SASL_PASSWORD", s.password.clone()));
        v
    };
    match name {
        "ssl" => tls(&s.ssl, "ssl"),
        "mtls" => {
            let mut v = tls(&s.mtls, "ssl");
            v.push(("KAFKA_SSL_CERTIFICATE_LOCATION", s.client_cert.clone()));
            v.push(("KAFKA_SSL_KEY_LOCATION", s.client_key.clone()));
            v
        }
        "sasl-plain" => sasl("PLAIN"),
        "scram-256" => sasl("SCRAM-SHA-256"),
        "scram-512" => sasl("SCRAM-SHA-512"),
        other => panic!("unknown mode {other}"),
    }
}

async fn insert_clicks(stack: &TestStack, n: i32) -> anyhow::Result<()> {
    stack
        .pg()
        .await?
        .execute(
            "INSERT INTO user_clicks (\"timestamp\", user_id, ip_address, url, element_id)
             SELECT '2024-05-06 07:00:00'::timestamp + make_interval(secs => g), gen_random_uuid(),
                    '10.1.1.1', '/p/' || g, 'btn-' || g FROM generate_series(1, $1::int) g",
            &[&n],
        )
        .await?;
    Ok(())
}

/// Relay (router) → Kafka → sink (clicks_table) and → stage (etl) → Kafka →
/// sink (events_processed), every client over the secured listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_sink_and_stage_deliver_over_tls_sasl_and_mutual_tls() -> anyhow::Result<()> {
    let s = secure()?;
    for name in ["ssl", "mtls", "sasl-plain", "scram-256", "scram-512"] {
        let mut stack = TestStack::start(&format!("ktls_{}", name.replace('-', "_"))).await?;
        stack.flows = "router,etl".into();
        stack.migrate().await?;
        for (k, v) in mode(&s, name) {
            stack.overrides.push((k.to_owned(), v));
        }
        let metrics = Metrics::default();
        let relay = stack.spawn_relay(&metrics)?;
        let stage = stack.spawn_stage(&metrics)?;
        let sink = stack.spawn_sink(&metrics)?;
        insert_clicks(&stack, 25).await?;
        wait_until(&format!("{name}: rows loaded"), ARRIVAL, || async {
            Ok(stack.ch_count_final("clicks_table").await? == 25
                && stack.ch_count_final("events_processed").await? == 25)
        })
        .await;
        relay.stop().await?;
        stage.stop().await?;
        sink.stop().await?;
    }
    Ok(())
}

/// Wrong password (each SASL mechanism), a CA that did not sign the
/// broker's certificate, no client certificate where the broker requires
/// one: each daemon exits 2 with one line naming the setting, and the
/// password appears nowhere in its output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_and_untrusted_certificates_exit_2_naming_the_setting() {
    let s = secure().unwrap_or_else(|e| panic!("{e:#}"));
    let stack = TestStack::start("ktls_refused")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let wrong_password = "not-the-password-4711";
    let mut cases: Vec<(String, Vec<(&str, String)>, &str)> = Vec::new();
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let mut vars = mode(&s, "sasl-plain");
        vars.retain(|(k, _)| *k != "KAFKA_SASL_PASSWORD" && *k != "KAFKA_SASL_MECHANISM");
        vars.push(("KAFKA_SASL_MECHANISM", mechanism.to_owned()));
        vars.push(("KAFKA_SASL_PASSWORD", wrong_password.to_owned()));
        cases.push((
            format!("wrong {mechanism} password"),
            vars,
            "KAFKA_SASL_PASSWORD",
        ));
    }
    let mut untrusted = mode(&s, "ssl");
    untrusted.retain(|(k, _)| *k != "KAFKA_SSL_CA_LOCATION");
    untrusted.push(("KAFKA_SSL_CA_LOCATION", s.other_ca.clone()));
    cases.push((
        "untrusted broker certificate".into(),
        untrusted,
        "KAFKA_SSL_CA_LOCATION",
    ));
    let mut no_client_cert = mode(&s, "mtls");
    no_client_cert
        .retain(|(k, _)| *k != "KAFKA_SSL_CERTIFICATE_LOCATION" && *k != "KAFKA_SSL_KEY_LOCATION");
    cases.push((
        "no client certificate on the mutual-TLS listener".into(),
        no_client_cert,
        "KAFKA_SSL_CERTIFICATE_LOCATION",
    ));

    let base: Vec<(String, String)> = stack.daemon_env();
    for (what, vars, setting) in &cases {
        for daemon in ["relay", "sink", "stage"] {
            let mut env: Vec<(&str, &str)> = base
                .iter()
                .filter(|(k, _)| !vars.iter().any(|(v, _)| v == k))
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            env.extend(vars.iter().map(|(k, v)| (*k, v.as_str())));
            env.push((
                "FLOWS",
                if daemon == "stage" {
                    "etl"
                } else {
                    "user_logins"
                },
            ));
            let (code, stderr) = run_to_exit(daemon, &["run"], &env);
            let last = stderr.lines().last().unwrap_or_default();
            assert_eq!(code, Some(2), "{daemon}, {what}: exit 2; stderr: {stderr}");
            assert!(
                last.starts_with(&format!("{daemon}: invalid setting {setting}: ")),
                "{daemon}, {what}: one line naming {setting}; got: {last}"
            );
            assert!(
                !stderr.contains(wrong_password) && !stderr.contains(&s.password),
                "{daemon}, {what}: no secret in the output"
            );
        }
    }
}
