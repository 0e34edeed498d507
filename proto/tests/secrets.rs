//! Wire types that carry a private key or a token never show it in `Debug`
//! output (SPEC §12 "Secrets"): each test builds one with a recognisable
//! secret and asserts its `{:?}` and `{:#?}` hold no trace of it.

use std::time::SystemTime;

use corral_core::{FencingToken, Groups, RequestId, Role, WorkerId};
use corral_proto::boruta::{AccessInfo, TcpAddr};
use corral_proto::requests::AccessDetails;
use corral_proto::users::{CreatedUser, User};

const SECRET: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA\n";

fn assert_redacted(shown: &[String]) {
    for text in shown {
        assert!(!text.contains("c2VjcmV0LWtleS1tYXRlcmlhbA"), "the secret shows in {text}");
        assert!(text.contains("<redacted>"), "no redaction marker in {text}");
    }
}

#[test]
fn class9_debug_redacts_access_details() {
    let details = AccessDetails {
        request_id: RequestId(7),
        worker: WorkerId(uuid::Uuid::nil()),
        host: "corral.lab".to_string(),
        port: 20001,
        username: "lab".to_string(),
        private_key: Some(SECRET.to_string()),
        host_key: Some("ssh-ed25519 AAAA".to_string()),
        expires_at: SystemTime::UNIX_EPOCH,
        ssh_command: "ssh -p 20001 lab@corral.lab".to_string(),
        fence: FencingToken(3),
    };
    assert_redacted(&[format!("{details:?}"), format!("{details:#?}")]);
    assert!(format!("{details:?}").contains("corral.lab"), "the rest still shows");
}

#[test]
fn class9_debug_redacts_created_user_token() {
    let created = CreatedUser {
        user: User {
            name: "ana".to_string(),
            groups: Groups::default(),
            admin: false,
            role: Role::User,
            created_at: SystemTime::UNIX_EPOCH,
        },
        token: SECRET.to_string(),
    };
    assert_redacted(&[format!("{created:?}"), format!("{created:#?}")]);
}

#[test]
fn class9_debug_redacts_boruta_access_info() {
    let info = AccessInfo {
        addr: TcpAddr { ip: "10.0.0.1".to_string(), port: 20001, zone: String::new() },
        key: SECRET.to_string(),
        username: "lab".to_string(),
    };
    assert_redacted(&[format!("{info:?}"), format!("{info:#?}")]);
}
