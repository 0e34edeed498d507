//! What SSH access is made of, decided once for the server, the agent and
//! the CLI: a user's public key ([`PublicKey`]), a lab user's name
//! ([`valid_user_name`]) and the words of a shell command line
//! ([`shell_quote`]).
//!
//! A public key is one line `TYPE BASE64 [COMMENT]` of a known type whose
//! base64 data decodes to a well-formed key blob of that same type. What
//! [`PublicKey::parse`] refuses, the server refuses at submission; what it
//! accepts, the agent installs. No options prefix (`command="..."`), no
//! second line, no control characters, no `ssh-dss`, no RSA key under
//! [`RSA_MIN_BITS`].

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Smallest RSA modulus accepted.
pub const RSA_MIN_BITS: usize = 2048;
/// Largest RSA modulus accepted (OpenSSH's own limit).
pub const RSA_MAX_BITS: usize = 16384;
/// Longest comment accepted, in characters.
pub const COMMENT_MAX_CHARS: usize = 256;
/// Longest key line accepted, in bytes.
pub const LINE_MAX_BYTES: usize = 16 * 1024;
/// Longest lab user name accepted (Linux's `useradd` limit).
pub const USER_NAME_MAX: usize = 32;

/// The key types corral installs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyType {
    Ed25519,
    Rsa,
    EcdsaP256,
    EcdsaP384,
    EcdsaP521,
    SkEd25519,
    SkEcdsaP256,
}

impl KeyType {
    pub const ALL: [KeyType; 7] = [
        KeyType::Ed25519,
        KeyType::Rsa,
        KeyType::EcdsaP256,
        KeyType::EcdsaP384,
        KeyType::EcdsaP521,
        KeyType::SkEd25519,
        KeyType::SkEcdsaP256,
    ];

    /// The OpenSSH name, as the first word of a key line.
    pub fn name(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "ssh-ed25519",
            KeyType::Rsa => "ssh-rsa",
            KeyType::EcdsaP256 => "ecdsa-sha2-nistp256",
            KeyType::EcdsaP384 => "ecdsa-sha2-nistp384",
            KeyType::EcdsaP521 => "ecdsa-sha2-nistp521",
            KeyType::SkEd25519 => "sk-ssh-ed25519@openssh.com",
            KeyType::SkEcdsaP256 => "sk-ecdsa-sha2-nistp256@openssh.com",
        }
    }

    pub fn from_name(name: &str) -> Option<KeyType> {
        KeyType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The curve name and the length of an uncompressed point, for ECDSA.
    fn curve(self) -> Option<(&'static str, usize)> {
        match self {
            KeyType::EcdsaP256 | KeyType::SkEcdsaP256 => Some(("nistp256", 65)),
            KeyType::EcdsaP384 => Some(("nistp384", 97)),
            KeyType::EcdsaP521 => Some(("nistp521", 133)),
            _ => None,
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a public key was refused; the messages are written for the user
/// who sent it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the key is empty; give one line TYPE BASE64 [COMMENT]")]
    Empty,
    #[error("the key is longer than {LINE_MAX_BYTES} bytes")]
    TooLong,
    #[error("the key must be a single line (it contains a line break)")]
    SeveralLines,
    #[error("the key contains control characters")]
    ControlCharacter,
    #[error("options before the key (such as command=\"...\") are not accepted; give TYPE BASE64 [COMMENT]")]
    Options,
    #[error("ssh-dss (DSA) keys are not accepted; use ssh-ed25519, ecdsa or ssh-rsa (at least {RSA_MIN_BITS} bits)")]
    Dsa,
    #[error("unsupported key type {0:?}; use ssh-ed25519, ecdsa-sha2-nistp256/384/521, ssh-rsa or a security key type")]
    UnknownType(String),
    #[error("the key has no base64 data after its type")]
    NoData,
    #[error("the key data is not valid base64")]
    NotBase64,
    #[error("the key data is not a well-formed {0} key")]
    Malformed(KeyType),
    #[error("the key data says {inner:?} but the line says {outer}")]
    TypeMismatch { outer: KeyType, inner: String },
    #[error("the RSA key has {0} bits; at least {RSA_MIN_BITS} are needed")]
    RsaTooShort(usize),
    #[error("the RSA key has {0} bits; at most {RSA_MAX_BITS} are accepted")]
    RsaTooLong(usize),
    #[error("the key comment is longer than {COMMENT_MAX_CHARS} characters")]
    CommentTooLong,
}

/// A checked public key. Its [`Display`](fmt::Display) form is the
/// normalised line `TYPE BASE64 [COMMENT]`, which parses back to the same
/// key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    key_type: KeyType,
    /// The base64 data, canonical (as re-encoded from the blob).
    data: String,
    comment: Option<String>,
}

impl PublicKey {
    /// Checks `text` (surrounding whitespace is ignored).
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        if text.len() > LINE_MAX_BYTES {
            return Err(KeyError::TooLong);
        }
        let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
        if text.is_empty() {
            return Err(KeyError::Empty);
        }
        if text.contains(['\n', '\r']) {
            return Err(KeyError::SeveralLines);
        }
        let separator = |c: char| c == ' ' || c == '\t';
        let (kind, rest) = text.split_once(separator).unwrap_or((text, ""));
        let Some(key_type) = KeyType::from_name(kind) else {
            return Err(if kind == "ssh-dss" {
                KeyError::Dsa
            } else if kind.contains(['=', ',', '"']) || KeyType::ALL.iter().any(|t| rest.contains(t.name())) {
                KeyError::Options
            } else if kind.chars().any(char::is_control) {
                KeyError::ControlCharacter
            } else {
                KeyError::UnknownType(kind.chars().take(40).collect())
            });
        };
        let rest = rest.trim_start_matches(separator);
        let (data, comment) = rest.split_once(separator).unwrap_or((rest, ""));
        if data.is_empty() {
            return Err(KeyError::NoData);
        }
        let blob = STANDARD.decode(data).map_err(|_| KeyError::NotBase64)?;
        check_blob(key_type, &blob)?;
        let comment = comment.trim_matches(separator);
        if comment.chars().any(char::is_control) {
            return Err(KeyError::ControlCharacter);
        }
        if comment.chars().count() > COMMENT_MAX_CHARS {
            return Err(KeyError::CommentTooLong);
        }
        Ok(PublicKey {
            key_type,
            data: STANDARD.encode(&blob),
            comment: (!comment.is_empty()).then(|| comment.to_string()),
        })
    }

    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    pub fn comment(&self) -> Option<&str> {
        self.comment.as_deref()
    }

    /// `TYPE BASE64`, without the comment.
    pub fn without_comment(&self) -> String {
        format!("{} {}", self.key_type, self.data)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.key_type, self.data)?;
        match &self.comment {
            Some(comment) => write!(f, " {comment}"),
            None => Ok(()),
        }
    }
}

/// Reads one SSH wire `string` (u32 length, bytes) off the front of `blob`.
fn take_string<'a>(blob: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, rest) = blob.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
    if rest.len() < len {
        return None;
    }
    let (value, rest) = rest.split_at(len);
    *blob = rest;
    Some(value)
}

/// `n` without its leading zero bytes.
fn significant(n: &[u8]) -> &[u8] {
    let start = n.iter().position(|b| *b != 0).unwrap_or(n.len());
    &n[start..]
}

/// Checks that `blob` is exactly one well-formed key of `key_type`.
fn check_blob(key_type: KeyType, mut blob: &[u8]) -> Result<(), KeyError> {
    let malformed = KeyError::Malformed(key_type);
    let inner = take_string(&mut blob).ok_or(malformed.clone())?;
    if inner != key_type.name().as_bytes() {
        let inner = String::from_utf8_lossy(inner).chars().filter(|c| !c.is_control()).take(40).collect();
        return Err(KeyError::TypeMismatch { outer: key_type, inner });
    }
    let blob = &mut blob;
    match key_type {
        KeyType::Ed25519 | KeyType::SkEd25519 => {
            let key = take_string(blob).ok_or(malformed.clone())?;
            if key.len() != 32 {
                return Err(malformed);
            }
        }
        KeyType::Rsa => {
            let exponent = take_string(blob).ok_or(malformed.clone())?;
            let modulus = take_string(blob).ok_or(malformed.clone())?;
            // mpints are positive here: a set top bit would make them negative.
            if significant(exponent).is_empty() || exponent.first().is_some_and(|b| b & 0x80 != 0) {
                return Err(malformed);
            }
            if modulus.first().is_some_and(|b| b & 0x80 != 0) {
                return Err(malformed);
            }
            let modulus = significant(modulus);
            let bits = match modulus.first() {
                Some(first) => modulus.len() * 8 - first.leading_zeros() as usize,
                None => 0,
            };
            if bits < RSA_MIN_BITS {
                return Err(KeyError::RsaTooShort(bits));
            }
            if bits > RSA_MAX_BITS {
                return Err(KeyError::RsaTooLong(bits));
            }
        }
        KeyType::EcdsaP256 | KeyType::EcdsaP384 | KeyType::EcdsaP521 | KeyType::SkEcdsaP256 => {
            let (curve, point_len) = key_type.curve().ok_or(malformed.clone())?;
            let named = take_string(blob).ok_or(malformed.clone())?;
            let point = take_string(blob).ok_or(malformed.clone())?;
            if named != curve.as_bytes() || point.len() != point_len || point[0] != 0x04 {
                return Err(malformed);
            }
        }
    }
    if matches!(key_type, KeyType::SkEd25519 | KeyType::SkEcdsaP256) {
        let application = take_string(blob).ok_or(malformed.clone())?;
        if application.is_empty() || std::str::from_utf8(application).is_err() {
            return Err(malformed);
        }
    }
    if !blob.is_empty() {
        return Err(malformed);
    }
    Ok(())
}

/// Whether `name` may be a lab user: the POSIX portable user name
/// characters (`A-Z a-z 0-9 . _ -`, not starting with `-`, an optional
/// final `$`), at most [`USER_NAME_MAX`] long. Such a name cannot pass
/// itself off as an ssh option or a second word of a command line.
pub fn valid_user_name(name: &str) -> bool {
    let body = name.strip_suffix('$').unwrap_or(name);
    !body.is_empty()
        && name.len() <= USER_NAME_MAX
        && !body.starts_with('-')
        && body.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `word` as one POSIX shell word: unchanged when it has only characters
/// no shell treats specially, else in single quotes (a `'` inside becomes
/// `'\''`).
pub fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@' | '=' | '+' | ',');
    if !word.is_empty() && word.chars().all(plain) {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Real keys made with `ssh-keygen` (OpenSSH 9.2).
    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm3hWqdYf0bCQ2uJxq1RxvVn5Cq5dLx0aQ0v8d8aZ3C";
    const ECDSA256: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBBLZcgh67D0fYM1xNG5SYS+OfO+Zm+Z0ZM3alGsD5Gh1ot6oJDM58t30yTYT+QbMjVhHwdVhIuqUPbzT5/6aKtI=";
    const DSS: &str = "ssh-dss AAAAB3NzaC1kc3MAAACBAIiRRJzao6mbuEt5U/b/Gpc0zMn2qlsSR9H7JsRiO4T3ZJ5kMhxngR3a0eEnJ0EjAJ5xdcrcO/PPVWzSJLzjdKjpPVABXI6XreNbeKc5m7/taY91ioP59LGNh4iA8rnvbeWA5TUxdSxgLIKO0pCmaMMz4TwrIWkseQS+gWmCz3y/AAAAFQCJYOWbBIiyCpAz3af8wbMsm3jE8QAAAIAHMhyVUUPdqGpBXPVhB1tc3Ibq6Kt5X+jDBkda/nJCB7rxQzZNcYnLM1zNgxPIkKUPK/bpCeQMwPG9Pqbq4SNAuKydL3hKlY728qlxr297eBTcrMTiWddVcdI6rHEa/Pv1CsUkmHqiKCH8UryOtC5zpvfJYRHSS1mZDvNwr7pELAAAAIBwbU5ZQYKtEPuQ+dNwui11TrwmjqJB1vY5Fuc8dthmcLgfgscWtDgQIX0HQrXILJ3PXnvaomiLtRo9JraKFOQwYZi2SQ8RL8f28zwmnwCOdcQeJsjq82SjPw3ENsoewv8XC+cAjZefvkNuo2IvXfdBUpZbGNl9PSyR363EGqCPHg==";

    fn blob(parts: &[&[u8]]) -> String {
        let mut out = Vec::new();
        for part in parts {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
        STANDARD.encode(out)
    }

    fn rsa(bits: usize) -> String {
        let mut modulus = vec![0u8; bits / 8 + 1];
        modulus[1] = 0xc5;
        format!("ssh-rsa {}", blob(&[b"ssh-rsa", &[1, 0, 1], &modulus]))
    }

    #[test]
    fn known_keys_are_accepted_and_normalised() {
        let key = PublicKey::parse(&format!("  {ED25519}\t alice@laptop  \n")).unwrap();
        assert_eq!(key.to_string(), format!("{ED25519} alice@laptop"));
        assert_eq!(key.without_comment(), ED25519);
        assert_eq!(PublicKey::parse(ECDSA256).unwrap().key_type(), KeyType::EcdsaP256);
        assert_eq!(PublicKey::parse(&rsa(2048)).unwrap().key_type(), KeyType::Rsa);
        let p384 = format!("ecdsa-sha2-nistp384 {}", blob(&[b"ecdsa-sha2-nistp384", b"nistp384", &[4; 97]]));
        assert!(PublicKey::parse(&p384).is_ok());
        let sk = format!("sk-ssh-ed25519@openssh.com {}", blob(&[b"sk-ssh-ed25519@openssh.com", &[7; 32], b"ssh:"]));
        assert!(PublicKey::parse(&sk).is_ok());
        let comment = "a comment with spaces";
        assert_eq!(PublicKey::parse(&format!("{ED25519} {comment}")).unwrap().comment(), Some(comment));
    }

    #[test]
    fn everything_else_is_refused_with_its_reason() {
        let cases: Vec<(String, KeyError)> = vec![
            (String::new(), KeyError::Empty),
            ("   \n".into(), KeyError::Empty),
            (DSS.into(), KeyError::Dsa),
            (format!("{ED25519} me\nssh-rsa AAAA"), KeyError::SeveralLines),
            (format!("{ED25519} evil\rcomment"), KeyError::SeveralLines),
            (format!("{ED25519} a\0b"), KeyError::ControlCharacter),
            (format!("{ED25519} a\u{1b}[2Jb"), KeyError::ControlCharacter),
            (format!("command=\"sh\" {ED25519}"), KeyError::Options),
            (format!("restrict {ED25519}"), KeyError::Options),
            ("ssh-foo AAAA".into(), KeyError::UnknownType("ssh-foo".into())),
            ("ssh-ed25519".into(), KeyError::NoData),
            ("ssh-ed25519 AAAA,C3Nz".into(), KeyError::NotBase64),
            ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm3".into(), KeyError::Malformed(KeyType::Ed25519)),
            (
                ED25519.replace("ssh-ed25519", "ssh-rsa"),
                KeyError::TypeMismatch { outer: KeyType::Rsa, inner: "ssh-ed25519".into() },
            ),
            (rsa(1024), KeyError::RsaTooShort(1024)),
            (format!("{ED25519} {}", "x".repeat(COMMENT_MAX_CHARS + 1)), KeyError::CommentTooLong),
            (format!("{ED25519}{}", " ".repeat(LINE_MAX_BYTES)), KeyError::TooLong),
        ];
        for (text, error) in cases {
            assert_eq!(PublicKey::parse(&text), Err(error), "{text:?}");
        }
        let trailing = format!("ssh-ed25519 {}", blob(&[b"ssh-ed25519", &[1; 32], b"extra"]));
        assert_eq!(PublicKey::parse(&trailing), Err(KeyError::Malformed(KeyType::Ed25519)));
        let wrong_curve = format!("ecdsa-sha2-nistp256 {}", blob(&[b"ecdsa-sha2-nistp256", b"nistp384", &[4; 65]]));
        assert_eq!(PublicKey::parse(&wrong_curve), Err(KeyError::Malformed(KeyType::EcdsaP256)));
    }

    #[test]
    fn user_names_are_posix_portable() {
        for good in ["lab", "lab-1", "Lab_user.2", "machine$", "_svc"] {
            assert!(valid_user_name(good), "{good}");
        }
        for bad in ["", "-oProxyCommand=sh", "a b", "lab;id", "lab@host", "$", "x\n", "é", &"a".repeat(33)] {
            assert!(!valid_user_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn shell_words_are_quoted() {
        assert_eq!(shell_quote("lab@corral.lab"), "lab@corral.lab");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("$(reboot)"), "'$(reboot)'");
        assert_eq!(shell_quote(""), "''");
    }

    fn cases() -> u32 {
        std::env::var("CORRAL_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(256)
    }

    fn any_key() -> impl Strategy<Value = String> {
        let comment = proptest::option::of("[ -~]{0,40}");
        (prop::sample::select(vec![ED25519, ECDSA256]), comment).prop_map(|(key, comment)| match comment {
            Some(comment) => format!("{key} {comment}"),
            None => key.to_string(),
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        /// Arbitrary text never panics the parser.
        #[test]
        fn arbitrary_text_never_panics(text in any::<String>()) {
            let _ = PublicKey::parse(&text);
        }

        /// Arbitrary blobs behind a known type never panic it either.
        #[test]
        fn arbitrary_blobs_never_panic(kind in prop::sample::select(KeyType::ALL.to_vec()),
                                       bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = PublicKey::parse(&format!("{kind} {}", STANDARD.encode(bytes)));
        }

        /// What is accepted prints as one line that parses back the same.
        #[test]
        fn accepted_keys_round_trip(text in any_key()) {
            let key = PublicKey::parse(&text).unwrap();
            let line = key.to_string();
            prop_assert!(!line.contains(['\n', '\r', '\0']));
            prop_assert_eq!(PublicKey::parse(&line), Ok(key));
        }

        /// Quoting gives one word that a shell reads back unchanged.
        #[test]
        fn quoted_words_have_no_bare_specials(word in any::<String>()) {
            let quoted = shell_quote(&word);
            if quoted != word {
                prop_assert!(quoted.starts_with('\'') && quoted.ends_with('\''));
                prop_assert_eq!(quoted[1..quoted.len() - 1].replace("'\\''", "'"), word);
            }
        }
    }
}
