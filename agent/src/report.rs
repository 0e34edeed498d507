//! How the agent tells an error: its message and its causes (the
//! `source()` chain), `: `-separated, as anyhow's `{:#}` prints them. The
//! agent's errors keep their causes as sources and do not repeat them in
//! their own message, so logs and command results use [`chain`].

use std::error::Error;

/// `err`'s message followed by each of its causes.
pub fn chain(err: &(dyn Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(next) = cause {
        text.push_str(": ");
        text.push_str(&next.to_string());
        cause = next.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot update /etc/corral/authorized_keys/lab")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_names_every_cause_once() {
        let err = Outer(std::io::Error::other("permission denied"));
        assert_eq!(chain(&err), "cannot update /etc/corral/authorized_keys/lab: permission denied");
        assert_eq!(chain(&std::io::Error::other("alone")), "alone");
    }
}
