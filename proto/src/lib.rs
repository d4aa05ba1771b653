//! Generated gRPC code for the scheduler <-> worker protocol, package
//! `trainyard.v1` (source: `core/proto/trainyard/v1/*.proto`, compiled by
//! `build.rs` with `protox`, so no system `protoc` is needed).
//!
//! Domain types never derive prost: the scheduler and worker convert at their
//! transport edges.

/// Protocol `trainyard.v1`: messages, the `WorkerService` client
/// (`worker_service_client`) and server (`worker_service_server`).
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    missing_docs,
    rust_2018_idioms,
    unreachable_pub
)]
pub mod v1 {
    tonic::include_proto!("trainyard.v1");

    /// Version of the wire protocol this build speaks. Bump it on any change
    /// that an older peer would misread; the scheduler rejects a worker
    /// whose `RegisterRequest.protocol_version` differs, with a reason.
    pub const PROTOCOL_VERSION: u32 = 1;

    /// How a scheduler replica that does not lead answers every call: status
    /// `UNAVAILABLE` whose message starts with this text, so a worker knows
    /// to try its next `--scheduler` URL rather than wait for this one.
    pub const NOT_LEADER_PREFIX: &str = "not the leader";

    /// Response metadata of a "not the leader" status: the leader's worker
    /// URL, when the replica knows it. Absent when it does not.
    pub const LEADER_METADATA_KEY: &str = "trainyard-leader";

    /// Encoded `FileDescriptorSet` of the package, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/trainyard_descriptor.bin"));
}

#[cfg(test)]
mod tests {
    use super::v1;
    use prost::Message as _;

    #[test]
    fn worker_message_roundtrips_through_the_wire_format() {
        let msg = v1::WorkerMessage {
            kind: Some(v1::worker_message::Kind::TaskFinished(v1::TaskFinished {
                attempt: Some(v1::AttemptRef {
                    task_instance_id: "ti-1".into(),
                    attempt: 2,
                }),
                outcome: v1::TaskOutcome::TimedOut as i32,
                exit_code: None,
                signal: Some(9),
                metrics: [("auc".to_string(), 0.91)].into_iter().collect(),
                ..Default::default()
            })),
        };
        let bytes = msg.encode_to_vec();
        let back = v1::WorkerMessage::decode(bytes.as_slice()).unwrap();
        assert_eq!(msg, back);
    }

    #[test]
    fn descriptor_set_names_the_package_and_service() {
        // Checked on the raw bytes to avoid a prost-types dependency: names
        // appear verbatim in an encoded descriptor.
        let contains = |needle: &[u8]| {
            v1::FILE_DESCRIPTOR_SET
                .windows(needle.len())
                .any(|w| w == needle)
        };
        assert!(contains(b"trainyard.v1"));
        assert!(contains(b"WorkerService"));
    }
}
