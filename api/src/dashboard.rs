//! The web dashboard at `/`: static files compiled into the binary
//! (`api/dashboard/`), served without authentication; the page reads
//! everything else from `/v1` with the token it is given at sign-in.
//!
//! Every answer carries a Content-Security-Policy that allows only this
//! server's own scripts, styles and connections (no inline script, no
//! other origin), so that a value shown on the page cannot run as code
//! even if it slipped past the page's text-only rendering.

use actix_web::http::header;
use actix_web::{HttpResponse, web};

use crate::endpoint;

/// One embedded file: its path under `/`, content type and bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset { path: "/", content_type: "text/html; charset=utf-8", body: include_bytes!("../dashboard/index.html") },
    Asset {
        path: "/dashboard/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../dashboard/style.css"),
    },
    Asset {
        path: "/dashboard/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../dashboard/app.js"),
    },
    Asset {
        path: "/dashboard/api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../dashboard/api.js"),
    },
    Asset {
        path: "/dashboard/events.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../dashboard/events.js"),
    },
    Asset {
        path: "/dashboard/view.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../dashboard/view.js"),
    },
    Asset { path: "/dashboard/icon.svg", content_type: "image/svg+xml", body: include_bytes!("../dashboard/icon.svg") },
];

const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn routes(cfg: &mut web::ServiceConfig) {
    for asset in ASSETS {
        let serve = move || async move { page(asset) };
        cfg.service(endpoint(asset.path).route(web::get().to(serve)).route(web::head().to(serve)));
    }
}

fn page(asset: &'static Asset) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(asset.content_type)
        // Revalidated on each load, so an upgraded server's page is used
        // at once (the files are small).
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .body(asset.body)
}
