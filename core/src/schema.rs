//! OpenAPI schemas of the core's wire types (`/openapi.json`, built by the
//! api crate with utoipa): each says what the type's serde form accepts,
//! with the bounds the parsers enforce, so that the document and the
//! checks do not drift apart. Pure data: building a schema does no IO.
//!
//! [`Rfc3339`] and [`HumanDuration`] are stand-ins for `SystemTime` and
//! `Duration` fields that travel through [`crate::time`]'s serde helpers
//! (`#[schema(value_type = Rfc3339)]` on such a field).

use utoipa::openapi::schema::{ArrayBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use crate::caps::{Caps, Groups};
use crate::ids::{FencingToken, RequestId, SessionId, WorkerId};
use crate::priority::Priority;

fn string(format: Option<SchemaFormat>, description: &str) -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String).format(format).description(Some(description))
}

fn uuid() -> Option<SchemaFormat> {
    // utoipa names the format only with its `uuid` feature, which would
    // pull in more than this string.
    Some(SchemaFormat::Custom("uuid".to_string()))
}

fn integer(minimum: Option<i64>, maximum: Option<i64>, description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(minimum)
        .maximum(maximum)
        .description(Some(description))
}

macro_rules! schema {
    ($type:ty, $name:literal, $body:expr) => {
        impl PartialSchema for $type {
            fn schema() -> RefOr<Schema> {
                $body.into()
            }
        }

        impl ToSchema for $type {
            fn name() -> std::borrow::Cow<'static, str> {
                std::borrow::Cow::Borrowed($name)
            }
        }
    };
}

schema!(WorkerId, "WorkerId", string(uuid(), "A worker's UUID."));
schema!(SessionId, "SessionId", string(uuid(), "An agent session's UUID."));
schema!(RequestId, "RequestId", integer(Some(1), None, "A request's id; ids grow with submission order."));
schema!(
    FencingToken,
    "FencingToken",
    integer(None, None, "Generation number of a worker, raised every time it is leased.")
);
schema!(Priority, "Priority", integer(Some(1), Some(16), "1 (most urgent) to 16 (least urgent); 8 by default."));
schema!(
    Caps,
    "Caps",
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "Capabilities, key to value: at most 64; a key is 1 to 128 bytes without control characters, '=' \
             or surrounding whitespace; a value at most 1024 bytes without control characters; the value of \
             `UUID` is a UUID.",
        ))
        .additional_properties(Some(ObjectBuilder::new().schema_type(Type::String).max_length(Some(1024))))
);
schema!(
    Groups,
    "Groups",
    ArrayBuilder::new()
        .items(ObjectBuilder::new().schema_type(Type::String).min_length(Some(1)).max_length(Some(128)))
        .unique_items(true)
        .max_items(Some(64))
        .description(Some(
            "Group names: at most 64, each 1 to 128 bytes without control characters or surrounding whitespace.",
        ))
);

/// The schema of a `SystemTime` on the wire: RFC 3339 in UTC, between 1970
/// and 9999.
#[derive(Debug)]
pub struct Rfc3339;

schema!(
    Rfc3339,
    "Timestamp",
    string(
        Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)),
        "RFC 3339 time, between 1970 and 9999 (answers are in UTC)."
    )
);

/// The schema of a `Duration` on the wire: humantime text.
#[derive(Debug)]
pub struct HumanDuration;

schema!(
    HumanDuration,
    "Duration",
    string(None, "A duration in humantime form (\"90s\", \"2h 30m\"), at most 100 years.").examples(["2h 30m"])
);
