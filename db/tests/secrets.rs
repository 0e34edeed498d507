//! Database records that carry a lease's private key never show it in
//! `Debug` output (SPEC §12 "Secrets").

use std::time::SystemTime;

use corral_core::{FencingToken, RequestId, WorkerId};
use corral_db::{LeaseRecord, StartLease};

const SECRET: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA\n";

fn assert_redacted(text: &str) {
    assert!(!text.contains("c2VjcmV0LWtleS1tYXRlcmlhbA"), "the secret shows in {text}");
    assert!(text.contains("<redacted>"), "no redaction marker in {text}");
}

#[test]
fn class9_debug_redacts_lease_record() {
    let lease = LeaseRecord {
        request: RequestId(1),
        worker: WorkerId(uuid::Uuid::nil()),
        fence: FencingToken(2),
        bound_at: SystemTime::UNIX_EPOCH,
        started_at: None,
        tunnel_port: Some(20000),
        key_type: Some("ed25519".to_string()),
        public_key: Some("ssh-ed25519 AAAA".to_string()),
        private_key: Some(SECRET.to_string()),
    };
    assert_redacted(&format!("{lease:?}"));
    assert_redacted(&format!("{lease:#?}"));
}

#[test]
fn class9_debug_redacts_start_lease() {
    let start = StartLease {
        request: RequestId(1),
        fence: FencingToken(2),
        at: SystemTime::UNIX_EPOCH,
        expires_at: SystemTime::UNIX_EPOCH,
        key_type: "ed25519".to_string(),
        public_key: "ssh-ed25519 AAAA".to_string(),
        private_key: Some(SECRET.to_string()),
        tunnel_port: None,
        actor: "agent:a".to_string(),
    };
    assert_redacted(&format!("{start:?}"));
}
