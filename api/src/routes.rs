//! The route table of the native API (`/v1`) and of the operational
//! endpoints (`/healthz`, `/readyz`, `/metrics`, `/openapi.json`).
//!
//! actix-web cannot list the routes it was given, so each module declares
//! its routes once, with [`family!`]: the macro turns that one list into
//! both the function that registers the routes with actix-web and the
//! [`Route`]s that name them. [`crate::configure`] registers every family
//! of [`crate::FAMILIES`], and [`table`] lists the same families, so the
//! table is what the server answers. `api/tests/openapi.rs` compares it
//! with `/openapi.json` both ways, and probes the live server with every
//! documented method and path.
//!
//! Architecture invariant: every route of `/v1` is registered through
//! [`family!`]; the Boruta-compatible adapter (`/api`) is described by
//! Boruta's own API and is outside the table.

use actix_web::web::ServiceConfig;

/// One route: its method (lower case, as in OpenAPI) and its full path,
/// with `{name}` parameters as actix-web and OpenAPI both write them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
}

/// The routes of one module: how to register them, and which they are.
#[derive(Clone, Copy)]
pub struct Family {
    pub configure: fn(&mut ServiceConfig),
    pub routes: &'static [Route],
}

/// Declares a [`Family`]: `scope "/prefix" { "/sub" => [get => handler,
/// ...], ... }` (a scope with a static prefix, see [`crate::configure`])
/// or `{ "/path" => [...], ... }` (routes at the top level). Each path is
/// a [`crate::endpoint`], so other methods get a JSON 405.
#[macro_export]
#[doc(hidden)]
macro_rules! family {
    (scope $scope:literal { $( $path:literal => [ $( $method:ident => $handler:path ),+ $(,)? ] ),+ $(,)? }) => {
        $crate::routes::Family {
            configure: |cfg: &mut ::actix_web::web::ServiceConfig| {
                cfg.service(
                    ::actix_web::web::scope($scope)
                        $( .service($crate::endpoint($path) $( .route(::actix_web::web::$method().to($handler)) )+) )+
                );
            },
            routes: &[ $( $( $crate::routes::Route { method: stringify!($method), path: concat!($scope, $path) }, )+ )+ ],
        }
    };
    ({ $( $path:literal => [ $( $method:ident => $handler:path ),+ $(,)? ] ),+ $(,)? }) => {
        $crate::routes::Family {
            configure: |cfg: &mut ::actix_web::web::ServiceConfig| {
                $( cfg.service($crate::endpoint($path) $( .route(::actix_web::web::$method().to($handler)) )+); )+
            },
            routes: &[ $( $( $crate::routes::Route { method: stringify!($method), path: $path }, )+ )+ ],
        }
    };
}

/// Every route of every family, sorted.
pub fn table() -> Vec<Route> {
    let mut routes: Vec<Route> = crate::FAMILIES.iter().flat_map(|f| f.routes.iter().copied()).collect();
    routes.sort();
    routes
}
