//! `/v1/users`: admins create users (the token is shown once), list and
//! delete them (deleting ends the user's requests and leases; see
//! `Corral::delete_user`).

use actix_web::{HttpRequest, HttpResponse, web};
use corral_actors::Caller;
use corral_core::Role;
use corral_core::records::UserRecord;
use corral_proto::error::ErrorBody;
use corral_proto::users::{CreatedUser, NewUser, User};

use crate::AppState;
use crate::audit::audited;
use crate::auth::Auth;
use crate::error::ApiError;
use crate::routes::Family;

pub(crate) const ROUTES: Family = crate::family! {
    scope "/v1/users" {
        "" => [post => create, get => list],
        "/{name}" => [delete => delete],
    }
};

fn to_wire(u: UserRecord) -> User {
    User { admin: u.role == Role::Admin, name: u.name, groups: u.groups, role: u.role, created_at: u.created_at }
}

/// An admin creates a user (or, with `agent`, an agent identity); the
/// token is in this answer only.
#[utoipa::path(
    post, path = "/v1/users", operation_id = "create_user", tag = "users",
    request_body = NewUser,
    responses(
        (status = 201, description = "The user and its token", body = CreatedUser,
         headers(("Location" = String, description = "The user's URL"))),
        (status = 409, description = "`conflict`: a user of that name exists", body = ErrorBody),
    ),
)]
async fn create(
    state: web::Data<AppState>,
    auth: Auth,
    body: web::Json<NewUser>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_admin()?;
    let new = body.into_inner();
    let detail = format!(
        "admin={} agent={} groups={}",
        new.admin,
        new.agent,
        serde_json::to_string(&new.groups).unwrap_or_default()
    );
    audited(&state, &req, caller, "user.create", new.name.clone(), detail, create_user(&state, caller, new)).await
}

async fn create_user(state: &AppState, caller: &Caller, new: NewUser) -> Result<HttpResponse, ApiError> {
    let groups = corral_core::Groups::validated(new.groups.iter().map(str::to_string).collect())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let role = match (new.admin, new.agent) {
        (true, true) => return Err(ApiError::bad_request("a user cannot be both admin and agent")),
        (true, false) => Role::Admin,
        (false, true) => Role::Agent,
        (false, false) => Role::User,
    };
    let (user, token) = state.corral.create_user(caller, &new.name, role, &groups).await?;
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/v1/users/{}", user.name)))
        .json(CreatedUser { user: to_wire(user), token }))
}

#[utoipa::path(
    get, path = "/v1/users", operation_id = "list_users", tag = "users",
    responses((status = 200, description = "Every user", body = Vec<User>)),
)]
async fn list(state: web::Data<AppState>, auth: Auth) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_admin()?;
    let users: Vec<User> = state.corral.users(caller).await?.into_iter().map(to_wire).collect();
    Ok(HttpResponse::Ok().json(users))
}

/// An admin deletes a user: their waiting requests are cancelled and
/// their leases end.
#[utoipa::path(
    delete, path = "/v1/users/{name}", operation_id = "delete_user", tag = "users",
    params(("name" = String, Path, description = "The user's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 409, description = "`conflict`: the user cannot be deleted (the caller itself)", body = ErrorBody),
    ),
)]
async fn delete(
    state: web::Data<AppState>,
    auth: Auth,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_admin()?;
    let name = path.into_inner();
    audited(&state, &req, caller, "user.delete", name.clone(), "", async {
        state.corral.delete_user(caller, &name).await?;
        Ok(HttpResponse::NoContent().finish())
    })
    .await
}
