//! A Kafka for development and tests where no broker can be installed:
//! librdkafka's mock cluster, listening on real 127.0.0.1 ports that other
//! processes (the relay and sink binaries) can use.
//!
//! Differences from Kafka that tests must respect: read_committed consumers
//! still see aborted messages; each partition keeps only ~5 MiB / 100k
//! batches; a fenced producer's sends are still accepted; offsets sent in a
//! transaction (TxnOffsetCommit) are acknowledged but not stored.
#![allow(unsafe_code)]

pub mod cluster;
pub mod link;

use std::ffi::{CStr, CString};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka_sys as rdsys;

/// An in-process mock cluster. Dropping it stops the brokers.
pub struct MockKafka {
    cluster: *mut rdsys::rd_kafka_mock_cluster_t,
    // Owns the librdkafka handle the cluster runs on; dropped after it.
    _handle: BaseProducer,
    bootstrap: String,
}

// SAFETY: the mock cluster API posts operations to the cluster's own thread
// and is safe to call from any thread; the pointer stays valid until drop.
unsafe impl Send for MockKafka {}
unsafe impl Sync for MockKafka {}

impl MockKafka {
    /// Starts `brokers` brokers. Consumer groups rebalance at once (Kafka's
    /// 3 s initial delay is set to 0).
    pub fn start(brokers: i32) -> Result<Self> {
        let handle: BaseProducer = ClientConfig::new()
            .set("client.id", "mock-kafka")
            .create()
            .context("creating the librdkafka handle for the mock cluster")?;
        // SAFETY: the handle outlives the cluster (see Drop).
        let cluster =
            unsafe { rdsys::rd_kafka_mock_cluster_new(handle.client().native_ptr(), brokers) };
        if cluster.is_null() {
            bail!("librdkafka could not start a mock cluster");
        }
        // SAFETY: cluster is valid; the returned string lives as long as it.
        let bootstrap = unsafe { CStr::from_ptr(rdsys::rd_kafka_mock_cluster_bootstraps(cluster)) }
            .to_string_lossy()
            .into_owned();
        unsafe { rdsys::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0) };
        Ok(Self {
            cluster,
            _handle: handle,
            bootstrap,
        })
    }

    /// `host:port,host:port,…` for `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic (the mock would auto-create unknown topics with 4
    /// partitions; tests want to choose).
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<()> {
        let name = CString::new(topic)?;
        let err = unsafe {
            rdsys::rd_kafka_mock_topic_create(self.cluster, name.as_ptr(), partitions, 1)
        };
        check(err, "create topic")
    }

    /// The next `errors.len()` requests of `api` fail with these errors.
    pub fn push_request_errors(&self, api: RDKafkaApiKey, errors: &[RDKafkaRespErr]) {
        unsafe {
            rdsys::rd_kafka_mock_push_request_errors_array(
                self.cluster,
                api as i16,
                errors.len(),
                errors.as_ptr(),
            );
        }
    }

    pub fn clear_request_errors(&self, api: RDKafkaApiKey) {
        unsafe { rdsys::rd_kafka_mock_clear_request_errors(self.cluster, api as i16) };
    }

    /// Makes every request on `topic` fail with `err` (NoError clears).
    pub fn set_topic_error(&self, topic: &str, err: RDKafkaRespErr) -> Result<()> {
        let name = CString::new(topic)?;
        unsafe { rdsys::rd_kafka_mock_topic_set_error(self.cluster, name.as_ptr(), err) };
        Ok(())
    }

    /// Starts recording every request the brokers receive (see
    /// [`Self::request_counts`]).
    pub fn start_request_tracking(&self) {
        unsafe { rdsys::rd_kafka_mock_start_request_tracking(self.cluster) };
    }

    /// How many requests of each API key were received since tracking
    /// started (e.g. 28 = TxnOffsetCommit, 8 = OffsetCommit).
    pub fn request_counts(&self) -> std::collections::BTreeMap<i16, usize> {
        let mut counts = std::collections::BTreeMap::new();
        let mut n: usize = 0;
        // SAFETY: the array and its n requests are ours until destroyed below.
        unsafe {
            let requests = rdsys::rd_kafka_mock_get_requests(self.cluster, &mut n);
            if requests.is_null() {
                return counts;
            }
            for i in 0..n {
                *counts
                    .entry(rdsys::rd_kafka_mock_request_api_key(*requests.add(i)))
                    .or_insert(0) += 1;
            }
            rdsys::rd_kafka_mock_request_destroy_array(requests, n);
        }
        counts
    }

    pub fn broker_down(&self, broker: i32) -> Result<()> {
        check(
            unsafe { rdsys::rd_kafka_mock_broker_set_down(self.cluster, broker) },
            "broker down",
        )
    }

    pub fn broker_up(&self, broker: i32) -> Result<()> {
        check(
            unsafe { rdsys::rd_kafka_mock_broker_set_up(self.cluster, broker) },
            "broker up",
        )
    }

    /// Makes `broker` the coordinator for `key` (`key_type` `transaction`
    /// or `group`), so that requests to the coordinator can be aimed at.
    pub fn coordinator_set(&self, key_type: &str, key: &str, broker: i32) -> Result<()> {
        let (key_type, key) = (CString::new(key_type)?, CString::new(key)?);
        check(
            unsafe {
                rdsys::rd_kafka_mock_coordinator_set(
                    self.cluster,
                    key_type.as_ptr(),
                    key.as_ptr(),
                    broker,
                )
            },
            "coordinator set",
        )
    }

    /// The next request of `api` that `broker` receives succeeds, but its
    /// response is sent only after `delay` (a reply that comes too late).
    pub fn delay_next_response(
        &self,
        broker: i32,
        api: RDKafkaApiKey,
        delay: Duration,
    ) -> Result<()> {
        let ms = std::ffi::c_int::try_from(delay.as_millis()).unwrap_or(std::ffi::c_int::MAX);
        let no_error = RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR as std::ffi::c_int;
        check(
            // SAFETY: one (error, rtt) pair of C ints follows the count, as
            // the variadic function expects.
            unsafe {
                rdsys::rd_kafka_mock_broker_push_request_error_rtts(
                    self.cluster,
                    broker,
                    api as i16,
                    1,
                    no_error,
                    ms,
                )
            },
            "push response delay",
        )
    }

    /// Adds `delay` to every response of `broker` (a slow broker).
    pub fn broker_round_trip(&self, broker: i32, delay: Duration) -> Result<()> {
        let ms = i32::try_from(delay.as_millis()).unwrap_or(i32::MAX);
        check(
            unsafe { rdsys::rd_kafka_mock_broker_set_rtt(self.cluster, broker, ms) },
            "broker rtt",
        )
    }
}

fn check(err: RDKafkaRespErr, what: &str) -> Result<()> {
    if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        Ok(())
    } else {
        bail!("mock cluster: {what} failed: {err:?}")
    }
}

impl Drop for MockKafka {
    fn drop(&mut self) {
        // SAFETY: created in `start`, destroyed once, before the handle.
        unsafe { rdsys::rd_kafka_mock_cluster_destroy(self.cluster) };
    }
}

/// Waits until `producer` can reach the cluster (metadata answered).
pub fn wait_ready(bootstrap: &str, timeout: Duration) -> Result<()> {
    let probe: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    probe
        .client()
        .fetch_metadata(None, timeout)
        .context("mock cluster did not answer metadata")?;
    Ok(())
}
