//! Key pairs made for leases. Ed25519 by default; RSA where asked (the
//! Boruta API wants an RSA key in PKCS#1 PEM). RSA generation is long CPU
//! work: callers run [`generate`] on a blocking thread, never on an actix
//! arbiter.

use rand_core::OsRng;
use ssh_key::{Algorithm, LineEnding, PrivateKey};

use crate::settings::KeyKind;

/// A lease key pair. `Debug` never prints the private half.
#[derive(Clone)]
pub struct LeaseKey {
    pub key_type: String,
    /// OpenSSH `authorized_keys` form: `TYPE BASE64 COMMENT`.
    pub public_openssh: String,
    /// OpenSSH private key PEM (`-----BEGIN OPENSSH PRIVATE KEY-----`).
    pub private_openssh: Option<String>,
}

impl std::fmt::Debug for LeaseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseKey").field("key_type", &self.key_type).field("public", &self.public_openssh).finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("could not generate a key pair: {0}")]
    Generate(String),
}

/// Size of RSA lease keys.
pub const RSA_BITS: usize = 2048;

/// Makes a key pair for the lease of `request`.
pub fn generate(kind: KeyKind, comment: &str) -> Result<LeaseKey, KeyError> {
    match kind {
        KeyKind::Ed25519 => {
            let mut private =
                PrivateKey::random(&mut OsRng, Algorithm::Ed25519).map_err(|e| KeyError::Generate(e.to_string()))?;
            private.set_comment(comment);
            let public = private.public_key().to_openssh().map_err(|e| KeyError::Generate(e.to_string()))?;
            let pem = private.to_openssh(LineEnding::LF).map_err(|e| KeyError::Generate(e.to_string()))?;
            Ok(LeaseKey {
                key_type: "ssh-ed25519".to_string(),
                public_openssh: public,
                private_openssh: Some(pem.to_string()),
            })
        }
        KeyKind::Rsa => {
            let rsa_key =
                rsa::RsaPrivateKey::new(&mut OsRng, RSA_BITS).map_err(|e| KeyError::Generate(e.to_string()))?;
            let keypair =
                ssh_key::private::RsaKeypair::try_from(rsa_key).map_err(|e| KeyError::Generate(e.to_string()))?;
            let mut private = PrivateKey::from(keypair);
            private.set_comment(comment);
            let public = private.public_key().to_openssh().map_err(|e| KeyError::Generate(e.to_string()))?;
            let pem = private.to_openssh(LineEnding::LF).map_err(|e| KeyError::Generate(e.to_string()))?;
            Ok(LeaseKey {
                key_type: "ssh-rsa".to_string(),
                public_openssh: public,
                private_openssh: Some(pem.to_string()),
            })
        }
    }
}

/// The PKCS#1 PEM of an RSA lease key given in OpenSSH form (for clients
/// of the Boruta API); None for other key types.
pub fn rsa_pkcs1_pem(private_openssh: &str) -> Option<String> {
    use rsa::BigUint;
    use rsa::pkcs1::EncodeRsaPrivateKey;
    let private = PrivateKey::from_openssh(private_openssh).ok()?;
    let keypair = private.key_data().rsa()?;
    let int = |m: &ssh_key::Mpint| m.as_positive_bytes().map(BigUint::from_bytes_be);
    let rsa_key = rsa::RsaPrivateKey::from_components(
        int(&keypair.public.n)?,
        int(&keypair.public.e)?,
        int(&keypair.private.d)?,
        vec![int(&keypair.private.p)?, int(&keypair.private.q)?],
    )
    .ok()?;
    rsa_key.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).ok().map(|pem| pem.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_pair_round_trips() {
        let key = generate(KeyKind::Ed25519, "corral-lease-1").unwrap();
        assert!(key.public_openssh.starts_with("ssh-ed25519 "));
        let private = PrivateKey::from_openssh(key.private_openssh.as_ref().unwrap()).unwrap();
        assert_eq!(private.public_key().to_openssh().unwrap(), key.public_openssh);
        assert!(!format!("{key:?}").contains("PRIVATE"));
    }

    #[test]
    fn rsa_pair_converts_to_pkcs1() {
        let key = generate(KeyKind::Rsa, "corral-lease-2").unwrap();
        assert!(key.public_openssh.starts_with("ssh-rsa "));
        let pkcs1 = rsa_pkcs1_pem(key.private_openssh.as_ref().unwrap()).unwrap();
        use rsa::pkcs1::DecodeRsaPrivateKey;
        use rsa::traits::PublicKeyParts;
        let parsed = rsa::RsaPrivateKey::from_pkcs1_pem(&pkcs1).unwrap();
        assert_eq!(parsed.size() * 8, RSA_BITS);
        assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    }

    /// What the server generates, the shared parser (and so the agent)
    /// accepts unchanged.
    #[test]
    fn generated_keys_pass_the_shared_parser() {
        for kind in [KeyKind::Ed25519, KeyKind::Rsa] {
            let key = generate(kind, "corral-lease-3").unwrap();
            let parsed = corral_core::ssh::PublicKey::parse(&key.public_openssh).unwrap();
            assert_eq!(parsed.to_string(), key.public_openssh);
        }
    }
}
