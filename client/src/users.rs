//! `/v1/users`: create, list, delete (admins).

use awc::http::Method;
use corral_proto::users::{CreatedUser, NewUser, User};

use crate::{Call, Client, Error};

impl Client {
    /// `POST /v1/users`: the user and its token, shown this once.
    pub async fn create_user(&self, user: &NewUser) -> Result<CreatedUser, Error> {
        self.answer(Call::new(Method::POST, "/v1/users").body(user)).await
    }

    /// `GET /v1/users`.
    pub async fn users(&self) -> Result<Vec<User>, Error> {
        self.answer(Call::new(Method::GET, "/v1/users")).await
    }

    /// `DELETE /v1/users/{name}` (204). Any name is sent as one path
    /// segment, so an odd name is not found rather than another path.
    pub async fn delete_user(&self, name: &str) -> Result<(), Error> {
        let path = format!("/v1/users/{}", path_segment(name));
        self.call::<(), serde_json::Value>(Call::new(Method::DELETE, &path)).await.map(drop)
    }
}

/// A user name as one URL path segment. Valid names need no escaping;
/// anything else is escaped so the server can say it is not found.
fn path_segment(name: &str) -> String {
    let mut out = String::new();
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_user_names_stay_one_path_segment() {
        assert_eq!(path_segment("alice.b-c_d"), "alice.b-c_d");
        assert_eq!(path_segment("../x y"), "..%2Fx%20y");
    }
}
