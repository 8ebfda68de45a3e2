//! Sign in with latchkey, over HTTP: discovery, JWKS, the authorization endpoint and the
//! consent page, token, userinfo, revocation, introspection and end-session. The rules
//! are `oidc::`; these handlers parse, call one of them and answer.
//!
//! Three groups, by what they need: [`api_router`] (no session, no CSRF: clients and
//! resource servers authenticate themselves), [`browser_router`] (the session, no CSRF
//! check: relying parties send browsers here, by GET or by a cross-site form POST) and
//! [`pages_router`] (session and CSRF: the consent and logout forms, and Remove under
//! Connected applications).

use askama::Template;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::SecretString;
use serde::Deserialize;

use super::csrf::CsrfToken;
use super::pages::{self, ErrorPage, Layout};
use super::state::AppState;
use super::{AppError, ClientOrigin, CurrentUser, WebForm};
use crate::auth::session as sessions;
use crate::oidc::authorize::{self, Params, Refusal, SessionView, Step};
use crate::oidc::clients::Client;
use crate::oidc::clients::{self, ClientAuthError, Credentials};
use crate::oidc::logout::{self, EndSession, EndSessionRequest, LogoutTarget};
use crate::oidc::tokens::{self, TokenError};
use crate::oidc::{Provider, SigningAlg};

/// Paths relying parties find through discovery.
pub const AUTHORIZE: &str = "/oidc/authorize";
pub const TOKEN: &str = "/oidc/token";
pub const USERINFO: &str = "/oidc/userinfo";
pub const JWKS: &str = "/oidc/jwks";
pub const REVOKE: &str = "/oidc/revoke";
pub const INTROSPECT: &str = "/oidc/introspect";
pub const END_SESSION: &str = "/oidc/logout";

pub fn api_router() -> Router<AppState> {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route(JWKS, get(jwks))
        .route(TOKEN, post(token))
        .route(USERINFO, get(userinfo).post(userinfo_post))
        .route(REVOKE, post(revoke))
        .route(INTROSPECT, post(introspect))
}

pub fn browser_router() -> Router<AppState> {
    Router::new()
        .route(AUTHORIZE, get(authorize_get).post(authorize_post))
        .route(END_SESSION, get(end_session_get).post(end_session_post))
}

pub fn pages_router() -> Router<AppState> {
    Router::new()
        .route("/oidc/consent", get(consent_page).post(consent_answer))
        .route(
            "/oidc/logout/confirm",
            get(logout_page).post(logout_confirm),
        )
        .route(
            "/settings/security/applications/{client_id}/remove",
            post(remove_application),
        )
}

fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn see_other(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(value) => {
            let mut response = StatusCode::SEE_OTHER.into_response();
            response.headers_mut().insert(header::LOCATION, value);
            response
        }
        Err(_) => AppError::BadRequest("unusable redirect".into()).into_response(),
    }
}

fn error_page(status: StatusCode, heading: &str, message: &str) -> Response {
    pages::render(status, &ErrorPage::new(heading, message))
}

/// A refusal without a client to answer to.
fn bad_request_page(message: &str) -> Response {
    error_page(
        StatusCode::BAD_REQUEST,
        "Sign-in request not valid",
        message,
    )
}

// ---- Discovery and keys ----------------------------------------------------------------

async fn discovery(State(provider): State<Provider>) -> Response {
    let base = provider.settings.issuer.as_str();
    let at = |path: &str| format!("{base}{path}");
    let body = serde_json::json!({
        "issuer": base,
        "authorization_endpoint": at(AUTHORIZE),
        "token_endpoint": at(TOKEN),
        "userinfo_endpoint": at(USERINFO),
        "jwks_uri": at(JWKS),
        "end_session_endpoint": at(END_SESSION),
        "revocation_endpoint": at(REVOKE),
        "introspection_endpoint": at(INTROSPECT),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": SigningAlg::ALL.map(SigningAlg::as_str),
        "scopes_supported": crate::oidc::SCOPES,
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "amr",
            "sid", "at_hash", "email", "email_verified", "preferred_username", "name"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "prompt_values_supported": ["none", "login", "consent"],
        "authorization_response_iss_parameter_supported": true,
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
        "claims_parameter_supported": false,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
    });
    public_json(body)
}

fn public_json(body: serde_json::Value) -> Response {
    let mut response = axum::Json(body).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    response
}

async fn jwks(State(provider): State<Provider>) -> Result<Response, AppError> {
    Ok(public_json(provider.signer.jwks().await?))
}

// ---- Authorization -----------------------------------------------------------------------

async fn session_view(current: &CurrentUser) -> Result<Option<SessionView>, AppError> {
    let Some(digest) = current.session.digest() else {
        return Ok(None);
    };
    Ok(Some(SessionView {
        user_id: current.user.id,
        email: current.user.email.as_str().to_owned(),
        session_hash: digest.as_bytes().to_vec(),
        signed_in_at: current.session.signed_in_at().await?,
        amr: current
            .session
            .sign_in_method()
            .await?
            .amr()
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
    }))
}

async fn authorize_get(
    State(provider): State<Provider>,
    ClientOrigin(origin): ClientOrigin,
    user: Option<CurrentUser>,
    RawQuery(query): RawQuery,
) -> Result<Response, AppError> {
    let raw = query.unwrap_or_default();
    run_authorize(&provider, &origin, user, raw.as_bytes()).await
}

async fn authorize_post(
    State(provider): State<Provider>,
    ClientOrigin(origin): ClientOrigin,
    user: Option<CurrentUser>,
    body: Bytes,
) -> Result<Response, AppError> {
    if user.is_none()
        && let Some(query) = as_query(&body)
    {
        return Ok(see_other(&format!("{AUTHORIZE}?{query}")));
    }
    run_authorize(&provider, &origin, user, &body).await
}

/// A form body that can travel as a query string. A relying party's cross-site form
/// POST arrives without the `SameSite=Lax` session cookie; the same request as a GET (a
/// top-level navigation) carries it, so `prompt=none` and logout see the real session.
fn as_query(body: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(body).ok()?;
    let fits = !text.is_empty() && text.len() <= 4096 && text.bytes().all(|b| b.is_ascii_graphic());
    fits.then_some(text)
}

async fn run_authorize(
    provider: &Provider,
    origin: &crate::auth::Origin,
    user: Option<CurrentUser>,
    raw: &[u8],
) -> Result<Response, AppError> {
    let (params, duplicates) = authorize::parse_params(raw);
    let (params, duplicates, resumed) = match params.get("request_id") {
        Some(id) => match authorize::load(provider, id).await? {
            Some((params, resumed)) => (params, Vec::new(), Some(resumed)),
            None => return Ok(expired_request()),
        },
        None => (params, duplicates, None),
    };
    let request = match authorize::validate(provider, params, &duplicates).await? {
        Ok(request) => request,
        Err(refusal) => return Ok(refused(refusal)),
    };
    let session = match &user {
        Some(current) => session_view(current).await?,
        None => None,
    };
    let step =
        authorize::authorize(provider, request, session, resumed, origin.ip.as_deref()).await?;
    match step {
        Step::Throttled(retry_after) => Err(AppError::Throttled { retry_after }),
        Step::Redirect(location) => Ok(see_other(&location)),
        Step::SignIn {
            resume,
            sign_out_first,
        } => {
            if sign_out_first && let Some(current) = &user {
                current.session.sign_out().await?;
            }
            let next: String = url::form_urlencoded::byte_serialize(resume.as_bytes()).collect();
            Ok(see_other(&format!("/sign-in?next={next}")))
        }
        Step::Consent(view) => Ok(see_other(&format!(
            "/oidc/consent?request_id={}",
            view.request_id
        ))),
    }
}

fn refused(refusal: Refusal) -> Response {
    match refusal {
        Refusal::Page(message) => bad_request_page(message),
        Refusal::Redirect(location) => see_other(&location),
    }
}

fn expired_request() -> Response {
    bad_request_page(
        "This sign-in request has expired or was already answered. Go back to the application and sign in again.",
    )
}

#[derive(Template)]
#[template(path = "oidc_consent.html")]
struct ConsentPage {
    layout: Layout,
    client_name: String,
    email: String,
    receives: Vec<&'static str>,
    request_id: String,
}

fn describe_scope(scope: &str) -> Option<&'static str> {
    match scope {
        "openid" => Some("Your latchkey account ID, and when and how you signed in"),
        "email" => Some("Your email address"),
        "profile" => Some("Your user name (your email address)"),
        "offline_access" => Some("Access that renews itself while this latchkey session lasts"),
        _ => None,
    }
}

#[derive(Deserialize)]
struct ConsentQuery {
    #[serde(default)]
    request_id: String,
}

async fn consent_page(
    State(provider): State<Provider>,
    current: CurrentUser,
    csrf: CsrfToken,
    Query(query): Query<ConsentQuery>,
) -> Result<Response, AppError> {
    let Some((params, _)) = authorize::load(&provider, &query.request_id).await? else {
        return Ok(expired_request());
    };
    let request = match authorize::validate(&provider, params, &[]).await? {
        Ok(request) => request,
        Err(refusal) => return Ok(refused(refusal)),
    };
    let page = ConsentPage {
        layout: Layout::new(&format!("Allow {}?", request.client.name), &csrf.0)
            .signed_in(current.user.email.as_str()),
        client_name: request.client.name.clone(),
        email: current.user.email.as_str().to_owned(),
        receives: request
            .scopes
            .iter()
            .filter_map(|s| describe_scope(s))
            .collect(),
        request_id: query.request_id,
    };
    Ok(no_store(pages::render(StatusCode::OK, &page)))
}

#[derive(Deserialize)]
struct ConsentForm {
    #[serde(default)]
    request_id: String,
    #[serde(default)]
    decision: String,
}

async fn consent_answer(
    State(provider): State<Provider>,
    current: CurrentUser,
    WebForm(form): WebForm<ConsentForm>,
) -> Result<Response, AppError> {
    let allow = match form.decision.as_str() {
        "allow" => true,
        "deny" => false,
        _ => return Err(AppError::BadRequest("choose Allow or Deny".into())),
    };
    let Some((params, resumed)) = authorize::load(&provider, &form.request_id).await? else {
        return Ok(expired_request());
    };
    let request = match authorize::validate(&provider, params, &[]).await? {
        Ok(request) => request,
        Err(refusal) => return Ok(refused(refusal)),
    };
    let Some(session) = session_view(&current).await? else {
        return Err(AppError::BadRequest("no session".into()));
    };
    match authorize::answer_consent(&provider, request, &resumed, &session, allow).await? {
        Step::Redirect(location) => Ok(see_other(&location)),
        _ => Ok(expired_request()),
    }
}

// ---- Token endpoint and client authentication ---------------------------------------------

/// An OAuth error as JSON (RFC 6749 5.2), never cached.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    no_store(
        (
            status,
            axum::Json(serde_json::json!({ "error": error, "error_description": description })),
        )
            .into_response(),
    )
}

fn invalid_client() -> Response {
    let mut response = oauth_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "client authentication failed",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"latchkey\""),
    );
    response
}

/// `client_secret_basic` (the id and secret form-urlencoded inside Basic, RFC 6749
/// 2.3.1), `client_secret_post`, or `none`. More than one way at once is refused.
#[allow(clippy::result_large_err)]
fn credentials(headers: &HeaderMap, params: &Params) -> Result<Credentials, Response> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, value) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("basic").then(|| value.trim())
        });
    let decode = |s: &str| -> Option<String> {
        let spaced = s.replace('+', "%2B");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8()
            .ok()
            .map(|s| s.into_owned())
    };
    if let Some(value) = basic {
        if params.contains_key("client_secret") {
            return Err(oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "use one client authentication method",
            ));
        }
        let decoded = STANDARD
            .decode(value)
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        let Some((id, secret)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
            return Err(invalid_client());
        };
        let (Some(id), Some(secret)) = (decode(id), decode(secret)) else {
            return Err(invalid_client());
        };
        if params.get("client_id").is_some_and(|given| *given != id) {
            return Err(invalid_client());
        }
        return Ok(Credentials {
            client_id: id,
            secret: Some(SecretString::from(secret)),
        });
    }
    let Some(id) = params.get("client_id") else {
        return Err(invalid_client());
    };
    Ok(Credentials {
        client_id: id.clone(),
        secret: params
            .get("client_secret")
            .map(|s| SecretString::from(s.clone())),
    })
}

/// Parses the form and authenticates the client, or the error response.
async fn authenticated(
    provider: &Provider,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Result<(Client, Params), Response>, AppError> {
    let (params, duplicates) = authorize::parse_params(body);
    if let Some(name) = duplicates.first() {
        return Ok(Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("{name} given more than once"),
        )));
    }
    let credentials = match credentials(headers, &params) {
        Ok(credentials) => credentials,
        Err(response) => return Ok(Err(response)),
    };
    match clients::authenticate(provider, &credentials).await {
        Ok(client) => Ok(Ok((client, params))),
        Err(ClientAuthError::Invalid) => Ok(Err(invalid_client())),
        Err(ClientAuthError::Throttled { retry_after }) => {
            let mut response = oauth_error(
                StatusCode::TOO_MANY_REQUESTS,
                "invalid_client",
                "too many failed client authentications; try again later",
            );
            if let Ok(value) = HeaderValue::from_str(&retry_after.as_secs().max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            Ok(Err(response))
        }
        Err(ClientAuthError::Unexpected(e)) => Err(e.into()),
    }
}

async fn token(
    State(provider): State<Provider>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    let (client, params) = match authenticated(&provider, &headers, &body).await? {
        Ok(found) => found,
        Err(response) => return Ok(response),
    };
    let get = |name: &str| params.get(name).map(String::as_str);
    let outcome = match get("grant_type") {
        Some("authorization_code") => {
            let Some(code) = get("code") else {
                return Ok(oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "code is required",
                ));
            };
            tokens::exchange_code(
                &provider,
                &client,
                code,
                get("redirect_uri"),
                get("code_verifier"),
            )
            .await
        }
        Some("refresh_token") => {
            let Some(refresh) = get("refresh_token") else {
                return Ok(oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "refresh_token is required",
                ));
            };
            tokens::refresh(&provider, &client, refresh).await
        }
        None => Err(TokenError::InvalidRequest("grant_type is required")),
        Some(_) => Err(TokenError::UnsupportedGrantType),
    };
    Ok(match outcome {
        Ok(answer) => no_store(axum::Json(answer).into_response()),
        Err(TokenError::InvalidRequest(why)) => {
            oauth_error(StatusCode::BAD_REQUEST, "invalid_request", why)
        }
        Err(TokenError::InvalidGrant(why)) => {
            oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", why)
        }
        Err(TokenError::UnsupportedGrantType) => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only authorization_code and refresh_token are supported",
        ),
        Err(TokenError::Unexpected(e)) => return Err(e.into()),
    })
}

// ---- Userinfo --------------------------------------------------------------------------------

fn bearer_challenge(error: Option<&str>) -> Response {
    let value = match error {
        Some(error) => format!("Bearer realm=\"latchkey\", error=\"{error}\""),
        None => "Bearer realm=\"latchkey\"".to_owned(),
    };
    let mut response = no_store(
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({ "error": error.unwrap_or("invalid_request") })),
        )
            .into_response(),
    );
    if let Ok(value) = HeaderValue::from_str(&value) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

async fn answer_userinfo(provider: &Provider, token: Option<String>) -> Result<Response, AppError> {
    let Some(token) = token else {
        return Ok(bearer_challenge(None));
    };
    Ok(match tokens::userinfo(provider, &token).await? {
        Some(claims) => no_store(axum::Json(claims).into_response()),
        None => bearer_challenge(Some("invalid_token")),
    })
}

async fn userinfo(
    State(provider): State<Provider>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    answer_userinfo(&provider, bearer(&headers)).await
}

/// RFC 6750 2.2: the token may come in the form body instead of the header.
async fn userinfo_post(
    State(provider): State<Provider>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    let (params, _) = authorize::parse_params(&body);
    let token = bearer(&headers).or_else(|| params.get("access_token").cloned());
    answer_userinfo(&provider, token).await
}

// ---- Revocation and introspection ---------------------------------------------------------------

/// What revocation and introspection both start with (RFC 7009 and RFC 7662): the
/// client authenticated like at the token endpoint, and the `token` parameter.
async fn token_request(
    provider: &Provider,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Result<(Client, Params, String), Response>, AppError> {
    let (client, params) = match authenticated(provider, headers, body).await? {
        Ok(found) => found,
        Err(response) => return Ok(Err(response)),
    };
    let Some(token) = params.get("token").cloned() else {
        return Ok(Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "token is required",
        )));
    };
    Ok(Ok((client, params, token)))
}

async fn revoke(
    State(provider): State<Provider>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    let (client, params, token) = match token_request(&provider, &headers, &body).await? {
        Ok(found) => found,
        Err(response) => return Ok(response),
    };
    tokens::revoke(
        &provider,
        &client,
        &token,
        params.get("token_type_hint").map(String::as_str),
    )
    .await?;
    Ok(no_store(StatusCode::OK.into_response()))
}

async fn introspect(
    State(provider): State<Provider>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    let (client, params, token) = match token_request(&provider, &headers, &body).await? {
        Ok(found) => found,
        Err(response) => return Ok(response),
    };
    let answer = tokens::introspect(
        &provider,
        &client,
        &token,
        params.get("token_type_hint").map(String::as_str),
    )
    .await?;
    Ok(no_store(axum::Json(answer).into_response()))
}

// ---- End session ---------------------------------------------------------------------------------

async fn end_session_get(
    State(provider): State<Provider>,
    ClientOrigin(origin): ClientOrigin,
    user: Option<CurrentUser>,
    RawQuery(query): RawQuery,
) -> Result<Response, AppError> {
    run_end_session(
        &provider,
        &origin,
        user,
        query.unwrap_or_default().as_bytes(),
    )
    .await
}

async fn end_session_post(
    State(provider): State<Provider>,
    ClientOrigin(origin): ClientOrigin,
    user: Option<CurrentUser>,
    body: Bytes,
) -> Result<Response, AppError> {
    if user.is_none()
        && let Some(query) = as_query(&body)
    {
        return Ok(see_other(&format!("{END_SESSION}?{query}")));
    }
    run_end_session(&provider, &origin, user, &body).await
}

fn after_logout(target: Option<&LogoutTarget>) -> Response {
    match target.and_then(|t| t.redirect.as_deref()) {
        Some(uri) => see_other(uri),
        None => Redirect::to("/sign-in?notice=signed-out").into_response(),
    }
}

async fn sign_out(
    provider: &Provider,
    origin: &crate::auth::Origin,
    current: &CurrentUser,
) -> Result<(), AppError> {
    sessions::record_sign_out(&provider.accounts, Some(current.user.id), origin).await?;
    current.session.sign_out().await?;
    Ok(())
}

async fn run_end_session(
    provider: &Provider,
    origin: &crate::auth::Origin,
    user: Option<CurrentUser>,
    raw: &[u8],
) -> Result<Response, AppError> {
    let (params, duplicates) = authorize::parse_params(raw);
    if !duplicates.is_empty() {
        return Ok(bad_request_page(
            "The application's logout request is not valid.",
        ));
    }
    let get = |name: &str| params.get(name).map(String::as_str);
    let request = EndSessionRequest {
        id_token_hint: get("id_token_hint"),
        client_id: get("client_id"),
        post_logout_redirect_uri: get("post_logout_redirect_uri"),
        state: get("state"),
    };
    let digest = user.as_ref().and_then(|u| u.session.digest());
    let decided =
        logout::end_session(provider, &request, digest.as_ref().map(|d| d.as_bytes())).await?;
    match decided {
        EndSession::Page(message) => Ok(bad_request_page(message)),
        EndSession::SignOut(target) => {
            if let Some(current) = &user {
                sign_out(provider, origin, current).await?;
            }
            Ok(after_logout(target.as_ref()))
        }
        EndSession::Confirm(target) => {
            let mut confirm = url::form_urlencoded::Serializer::new(String::new());
            if let Some(target) = &target {
                confirm.append_pair("client_id", &target.client_id);
            }
            if let Some(uri) = request.post_logout_redirect_uri {
                confirm.append_pair("post_logout_redirect_uri", uri);
            }
            if let Some(state) = request.state {
                confirm.append_pair("state", state);
            }
            Ok(see_other(&format!(
                "/oidc/logout/confirm?{}",
                confirm.finish()
            )))
        }
    }
}

#[derive(Template)]
#[template(path = "oidc_logout.html")]
struct LogoutPage {
    layout: Layout,
    client_name: Option<String>,
    client_id: Option<String>,
    post_logout_redirect_uri: Option<String>,
    logout_state: Option<String>,
}

#[derive(Deserialize)]
struct LogoutParams {
    client_id: Option<String>,
    post_logout_redirect_uri: Option<String>,
    state: Option<String>,
}

async fn checked_target(
    provider: &Provider,
    params: &LogoutParams,
) -> Result<Result<Option<LogoutTarget>, Response>, AppError> {
    let Some(client_id) = &params.client_id else {
        if params.post_logout_redirect_uri.is_some() {
            return Ok(Err(bad_request_page(
                "The application's logout request is not valid.",
            )));
        }
        return Ok(Ok(None));
    };
    Ok(
        match logout::target(
            provider,
            client_id,
            params.post_logout_redirect_uri.as_deref(),
            params.state.as_deref(),
        )
        .await?
        {
            Ok(target) => Ok(Some(target)),
            Err(message) => Err(bad_request_page(message)),
        },
    )
}

async fn logout_page(
    State(provider): State<Provider>,
    user: Option<CurrentUser>,
    csrf: CsrfToken,
    Query(params): Query<LogoutParams>,
) -> Result<Response, AppError> {
    let target = match checked_target(&provider, &params).await? {
        Ok(target) => target,
        Err(response) => return Ok(response),
    };
    let Some(current) = user else {
        return Ok(after_logout(target.as_ref()));
    };
    let page = LogoutPage {
        layout: Layout::new("Sign out of latchkey?", &csrf.0)
            .signed_in(current.user.email.as_str()),
        client_name: target.map(|t| t.client_name),
        client_id: params.client_id,
        post_logout_redirect_uri: params.post_logout_redirect_uri,
        logout_state: params.state,
    };
    Ok(pages::render(StatusCode::OK, &page))
}

async fn logout_confirm(
    State(provider): State<Provider>,
    ClientOrigin(origin): ClientOrigin,
    user: Option<CurrentUser>,
    WebForm(params): WebForm<LogoutParams>,
) -> Result<Response, AppError> {
    let target = match checked_target(&provider, &params).await? {
        Ok(target) => target,
        Err(response) => return Ok(response),
    };
    if let Some(current) = &user {
        sign_out(&provider, &origin, current).await?;
    }
    Ok(after_logout(target.as_ref()))
}

// ---- Connected applications --------------------------------------------------------------------

async fn remove_application(
    State(provider): State<Provider>,
    current: CurrentUser,
    Path(client_id): Path<String>,
) -> Result<Response, AppError> {
    crate::oidc::remove_connection(&provider, current.user.id, &client_id).await?;
    Ok(Redirect::to("/settings/security?notice=application-removed").into_response())
}

/// A row of Connected applications.
pub struct ConnectedRow {
    pub client_id: String,
    pub name: String,
    pub receives: String,
    pub since: String,
    pub since_iso: String,
}

/// The account's connected applications, for Settings → Security.
pub async fn connected_rows(
    provider: &Provider,
    user_id: uuid::Uuid,
) -> Result<Vec<ConnectedRow>, AppError> {
    let list = crate::oidc::connected_applications(provider, user_id).await?;
    Ok(list
        .into_iter()
        .map(|c| ConnectedRow {
            receives: c
                .scopes
                .iter()
                .filter_map(|s| match s.as_str() {
                    "openid" => Some("account ID"),
                    "email" => Some("email address"),
                    "profile" => Some("user name"),
                    "offline_access" => Some("renewing access"),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join(", "),
            since: c
                .since
                .format(time::macros::format_description!(
                    "[day] [month repr:short] [year]"
                ))
                .unwrap_or_default(),
            since_iso: c
                .since
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            client_id: c.client_id,
            name: c.name,
        })
        .collect())
}

// ---- Content-Security-Policy --------------------------------------------------------------------

/// Pages get a CSP whose `form-action` also names every registered client's redirect
/// origins: Chromium applies `form-action` to the redirects after a form post, and the
/// sign-in, two-factor and consent forms end in a 303 to a client's `redirect_uri`.
pub async fn form_action(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if html
        && !response
            .headers()
            .contains_key(header::CONTENT_SECURITY_POLICY)
    {
        let origins = state.oidc.redirect_origins().await;
        let policy = super::headers::csp_with(&state.config.allowed_hosts, &origins);
        if let Ok(value) = HeaderValue::from_str(&policy) {
            response
                .headers_mut()
                .insert(header::CONTENT_SECURITY_POLICY, value);
        }
    }
    response
}
