//! The authorization endpoint's rules: which requests are refused with a page (no
//! trustworthy `redirect_uri`) and which with a redirect to the client, when a sign-in
//! (again) or a consent comes first, and the code at the end.

use std::collections::BTreeMap;

use time::OffsetDateTime;
use uuid::Uuid;

use super::{CODE_TTL, Opaque, Provider, REQUEST_TTL, SCOPES, clients, sid_of};
use crate::auth::ServiceError;
use crate::auth::throttle::{self, IpScope};
use crate::store::oidc_clients::{self, Client};
use crate::store::{oidc_consents, oidc_grants, oidc_requests};

/// A request's parameters, each at most once.
pub type Params = BTreeMap<String, String>;

/// Reads `application/x-www-form-urlencoded` parameters (a query or a form body); the
/// names given more than once come back apart (RFC 6749 3.1: each at most once).
pub fn parse_params(raw: &[u8]) -> (Params, Vec<String>) {
    let mut params = Params::new();
    let mut duplicates = Vec::new();
    for (name, value) in url::form_urlencoded::parse(raw) {
        if params.contains_key(name.as_ref()) {
            duplicates.push(name.into_owned());
        } else {
            params.insert(name.into_owned(), value.into_owned());
        }
    }
    (params, duplicates)
}

/// What `prompt` asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prompt {
    pub none: bool,
    pub login: bool,
    pub consent: bool,
}

/// A checked authorization request.
#[derive(Debug)]
pub struct AuthRequest {
    pub client: Client,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub prompt: Prompt,
    pub max_age: Option<i64>,
    /// As sent, to wait for a sign-in or a consent answer.
    params: Params,
}

/// Why an authorization request gets no code.
#[derive(Debug)]
pub enum Refusal {
    /// No client or no registered `redirect_uri` to answer through: an error page (400)
    /// with this sentence, never a redirect.
    Page(&'static str),
    /// An OAuth error for the client, at this location (its `redirect_uri` with `error`,
    /// `state` and `iss`).
    Redirect(String),
}

/// `redirect_uri` with `params` added to its query (kept as registered otherwise).
fn location(redirect_uri: &str, params: &[(&str, Option<&str>)]) -> String {
    match url::Url::parse(redirect_uri) {
        Ok(mut url) => {
            {
                let mut query = url.query_pairs_mut();
                for (name, value) in params {
                    if let Some(value) = value {
                        query.append_pair(name, value);
                    }
                }
            }
            url.to_string()
        }
        // Registered URIs were checked when added; this cannot be reached.
        Err(_) => redirect_uri.to_owned(),
    }
}

/// The redirect that carries an OAuth error to the client (RFC 6749 4.1.2.1, RFC 9207).
pub fn error_location(
    provider: &Provider,
    redirect_uri: &str,
    state: Option<&str>,
    error: &str,
    description: &str,
) -> String {
    location(
        redirect_uri,
        &[
            ("error", Some(error)),
            ("error_description", Some(description)),
            ("state", state),
            ("iss", Some(&provider.settings.issuer)),
        ],
    )
}

const MAX_VALUE_LEN: usize = 2048;

/// Checks a request: first that it names a client and one of its registered redirect
/// URIs (else a page), then everything else (else an error through the redirect).
pub async fn validate(
    provider: &Provider,
    params: Params,
    duplicates: &[String],
) -> anyhow::Result<Result<AuthRequest, Refusal>> {
    let twice = |name: &str| duplicates.iter().any(|d| d == name);
    if twice("client_id") || twice("redirect_uri") {
        return Ok(Err(Refusal::Page(
            "The application's request names its client or its return address more than once.",
        )));
    }
    let Some(client_id) = params.get("client_id") else {
        return Ok(Err(Refusal::Page(
            "The application's request does not say which application it is.",
        )));
    };
    let client = if clients::valid_id(client_id) {
        oidc_clients::find(&provider.accounts.pool, client_id).await?
    } else {
        None
    };
    let Some(client) = client else {
        return Ok(Err(Refusal::Page(
            "The application is not registered with latchkey.",
        )));
    };
    let Some(redirect_uri) = params
        .get("redirect_uri")
        .and_then(|given| clients::registered(&client.redirect_uris, given))
        .map(str::to_owned)
    else {
        return Ok(Err(Refusal::Page(
            "The application asked to return to an address that is not registered for it.",
        )));
    };
    let state = params.get("state").cloned();
    let refuse = |error: &str, description: &str| {
        Ok(Err(Refusal::Redirect(error_location(
            provider,
            &redirect_uri,
            state.as_deref(),
            error,
            description,
        ))))
    };
    if let Some(name) = duplicates.first() {
        return refuse("invalid_request", &format!("{name} given more than once"));
    }
    if params.values().any(|v| v.len() > MAX_VALUE_LEN) {
        return refuse("invalid_request", "a parameter is too long");
    }
    if params.values().any(|v| v.chars().any(|c| c.is_control())) {
        return refuse("invalid_request", "a parameter holds a control character");
    }
    if params.contains_key("request") {
        return refuse("request_not_supported", "request objects are not supported");
    }
    if params.contains_key("request_uri") {
        return refuse("request_uri_not_supported", "request_uri is not supported");
    }
    match params.get("response_type").map(String::as_str) {
        Some("code") => {}
        None => return refuse("invalid_request", "response_type is required"),
        Some(_) => {
            return refuse(
                "unsupported_response_type",
                "only response_type=code is supported",
            );
        }
    }
    if let Some(mode) = params.get("response_mode")
        && mode != "query"
    {
        return refuse("invalid_request", "only response_mode=query is supported");
    }
    let requested: Vec<&str> = params
        .get("scope")
        .map(|s| s.split(' ').filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    if !requested.contains(&"openid") {
        return refuse("invalid_scope", "the openid scope is required");
    }
    let scopes: Vec<String> = SCOPES
        .iter()
        .filter(|known| requested.contains(known))
        .map(|s| (*s).to_owned())
        .collect();
    let code_challenge = match (
        params.get("code_challenge"),
        params.get("code_challenge_method").map(String::as_str),
    ) {
        (None, None) => None,
        (Some(challenge), Some("S256")) => {
            let well_formed = challenge.len() == 43
                && challenge
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !well_formed {
                return refuse(
                    "invalid_request",
                    "code_challenge must be a base64url SHA-256",
                );
            }
            Some(challenge.clone())
        }
        (Some(_), None | Some("plain")) => {
            return refuse("invalid_request", "code_challenge_method must be S256");
        }
        (None, Some(_)) => return refuse("invalid_request", "code_challenge is missing"),
        (Some(_), Some(_)) => {
            return refuse("invalid_request", "code_challenge_method must be S256");
        }
    };
    if client.is_public() && code_challenge.is_none() {
        return refuse(
            "invalid_request",
            "PKCE (code_challenge with S256) is required",
        );
    }
    let mut prompt = Prompt::default();
    for value in params
        .get("prompt")
        .map(|p| p.split(' '))
        .into_iter()
        .flatten()
    {
        match value {
            "none" => prompt.none = true,
            "login" => prompt.login = true,
            "consent" => prompt.consent = true,
            "select_account" | "" => {}
            _ => return refuse("invalid_request", "unknown prompt value"),
        }
    }
    if prompt.none && (prompt.login || prompt.consent) {
        return refuse("invalid_request", "prompt=none cannot be combined");
    }
    let max_age = match params.get("max_age") {
        None => None,
        Some(age) => match age.parse::<u32>() {
            Ok(age) => Some(i64::from(age)),
            Err(_) => return refuse("invalid_request", "max_age must be a number of seconds"),
        },
    };
    Ok(Ok(AuthRequest {
        nonce: params.get("nonce").cloned(),
        state,
        client,
        redirect_uri,
        scopes,
        code_challenge,
        prompt,
        max_age,
        params,
    }))
}

/// The signed-in latchkey session, as the provider needs it.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub user_id: Uuid,
    pub email: String,
    pub session_hash: Vec<u8>,
    /// Seconds since the epoch; `None` for a session from before it was recorded.
    pub signed_in_at: Option<i64>,
    pub amr: Vec<String>,
}

/// A request that waited for a sign-in or a consent, by its id.
#[derive(Debug, Clone)]
pub struct Resumed {
    pub request_id: String,
    pub created_at: OffsetDateTime,
}

/// What the person's browser does next.
#[derive(Debug)]
pub enum Step {
    /// Go here: the client's `redirect_uri` with a code or an error.
    Redirect(String),
    /// Sign in first (after signing this session out, for `prompt=login` or an old
    /// sign-in), then come back to `resume`, a path on latchkey.
    SignIn {
        resume: String,
        sign_out_first: bool,
    },
    /// Ask the person whether the client may have what it asks for.
    Consent(ConsentView),
    /// Too many waiting requests from this address: try again after this long.
    Throttled(std::time::Duration),
}

/// What the consent page shows.
#[derive(Debug)]
pub struct ConsentView {
    pub request_id: String,
    pub client_name: String,
    pub scopes: Vec<String>,
    pub email: String,
}

fn resume_path(request_id: &str) -> String {
    format!("/oidc/authorize?request_id={request_id}")
}

/// Stores the request to wait (unless it is waiting already); its id, or how long the
/// client address must wait: each stored request counts against `LATCHKEY_IP_RATE_LIMIT`
/// (scope `oidc_request`), so nobody fills the table.
async fn wait(
    provider: &Provider,
    request: &AuthRequest,
    resumed: Option<&Resumed>,
    ip: Option<&str>,
) -> anyhow::Result<Result<String, std::time::Duration>> {
    if let Some(resumed) = resumed {
        return Ok(Ok(resumed.request_id.clone()));
    }
    if let Some(ip) = ip {
        match throttle::check_ip(&provider.accounts, IpScope::OidcRequest, ip).await {
            Ok(()) => {}
            Err(ServiceError::Throttled { retry_after }) => return Ok(Err(retry_after)),
            Err(ServiceError::Busy) => return Ok(Err(std::time::Duration::from_secs(1))),
            Err(ServiceError::Unexpected(e)) => return Err(e),
        }
    }
    let id = Opaque::generate();
    let params = serde_json::to_value(&request.params)?;
    oidc_requests::insert(
        &provider.accounts.pool,
        &id.digest(),
        &params,
        REQUEST_TTL.as_secs_f64(),
    )
    .await?;
    Ok(Ok(id.expose().to_owned()))
}

/// A request that waited: its parameters, while it has not expired or been answered.
pub async fn load(
    provider: &Provider,
    request_id: &str,
) -> anyhow::Result<Option<(Params, Resumed)>> {
    if request_id.len() != 43 {
        return Ok(None);
    }
    let id = Opaque::presented(request_id);
    let Some((params, created_at)) =
        oidc_requests::find(&provider.accounts.pool, &id.digest()).await?
    else {
        return Ok(None);
    };
    let params: Params = serde_json::from_value(params).unwrap_or_default();
    Ok(Some((
        params,
        Resumed {
            request_id: request_id.to_owned(),
            created_at,
        },
    )))
}

/// Decides the next step for a checked request and the browser's session.
pub async fn authorize(
    provider: &Provider,
    request: AuthRequest,
    session: Option<SessionView>,
    resumed: Option<Resumed>,
    ip: Option<&str>,
) -> anyhow::Result<Step> {
    let refuse = |error: &str, description: &str| {
        Step::Redirect(error_location(
            provider,
            &request.redirect_uri,
            request.state.as_deref(),
            error,
            description,
        ))
    };
    let Some(session) = session else {
        if request.prompt.none {
            return Ok(refuse("login_required", "the person is not signed in"));
        }
        let id = match wait(provider, &request, resumed.as_ref(), ip).await? {
            Ok(id) => id,
            Err(retry_after) => return Ok(Step::Throttled(retry_after)),
        };
        return Ok(Step::SignIn {
            resume: resume_path(&id),
            sign_out_first: false,
        });
    };
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let signed_in_at = session.signed_in_at.unwrap_or(0);
    // A sign-in after the request was made satisfies prompt=login and max_age.
    let fresh = resumed
        .as_ref()
        .is_some_and(|r| signed_in_at >= r.created_at.unix_timestamp());
    let too_old = request.max_age.is_some_and(|age| now - signed_in_at > age);
    if !fresh && (request.prompt.login || too_old) {
        if request.prompt.none {
            return Ok(refuse(
                "login_required",
                "the sign-in is older than max_age",
            ));
        }
        let id = match wait(provider, &request, resumed.as_ref(), ip).await? {
            Ok(id) => id,
            Err(retry_after) => return Ok(Step::Throttled(retry_after)),
        };
        return Ok(Step::SignIn {
            resume: resume_path(&id),
            sign_out_first: true,
        });
    }
    let allowed = if request.client.skip_consent {
        true
    } else if request.prompt.consent {
        false
    } else {
        oidc_consents::find(&provider.accounts.pool, session.user_id, &request.client.id)
            .await?
            .is_some_and(|allowed| request.scopes.iter().all(|s| allowed.contains(s)))
    };
    if !allowed {
        if request.prompt.none {
            return Ok(refuse(
                "consent_required",
                "the person has not allowed this application",
            ));
        }
        let id = match wait(provider, &request, resumed.as_ref(), ip).await? {
            Ok(id) => id,
            Err(retry_after) => return Ok(Step::Throttled(retry_after)),
        };
        return Ok(Step::Consent(ConsentView {
            request_id: id,
            client_name: request.client.name.clone(),
            scopes: request.scopes.clone(),
            email: session.email.clone(),
        }));
    }
    issue_code(provider, &request, &session, resumed.as_ref()).await
}

/// The consent page's answer for a waiting request.
pub async fn answer_consent(
    provider: &Provider,
    request: AuthRequest,
    resumed: &Resumed,
    session: &SessionView,
    allow: bool,
) -> anyhow::Result<Step> {
    if !allow {
        oidc_requests::delete(
            &provider.accounts.pool,
            &Opaque::presented(&resumed.request_id).digest(),
        )
        .await?;
        return Ok(Step::Redirect(error_location(
            provider,
            &request.redirect_uri,
            request.state.as_deref(),
            "access_denied",
            "the person did not allow it",
        )));
    }
    oidc_consents::allow(
        &provider.accounts.pool,
        session.user_id,
        &request.client.id,
        &request.scopes,
    )
    .await?;
    issue_code(provider, &request, session, Some(resumed)).await
}

async fn issue_code(
    provider: &Provider,
    request: &AuthRequest,
    session: &SessionView,
    resumed: Option<&Resumed>,
) -> anyhow::Result<Step> {
    if let Some(resumed) = resumed {
        // Answered once: a second use of the same request id starts over.
        let pending = Opaque::presented(&resumed.request_id).digest();
        if !oidc_requests::delete(&provider.accounts.pool, &pending).await? {
            return Ok(Step::Redirect(error_location(
                provider,
                &request.redirect_uri,
                request.state.as_deref(),
                "invalid_request",
                "this authorization request was already answered",
            )));
        }
    }
    let code = Opaque::generate();
    let auth_time = session
        .signed_in_at
        .and_then(|at| OffsetDateTime::from_unix_timestamp(at).ok())
        .unwrap_or_else(OffsetDateTime::now_utc);
    let sid = sid_of(&session.session_hash);
    oidc_grants::insert_with_code(
        &provider.accounts.pool,
        &oidc_grants::NewGrant {
            client_id: &request.client.id,
            user_id: session.user_id,
            session_hash: &session.session_hash,
            sid: &sid,
            scopes: &request.scopes,
            nonce: request.nonce.as_deref(),
            auth_time,
            amr: &session.amr,
        },
        &code.digest(),
        &request.redirect_uri,
        request.code_challenge.as_deref(),
        CODE_TTL.as_secs_f64(),
    )
    .await?;
    Ok(Step::Redirect(location(
        &request.redirect_uri,
        &[
            ("code", Some(code.expose())),
            ("state", request.state.as_deref()),
            ("iss", Some(&provider.settings.issuer)),
        ],
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parameter_given_twice_is_reported() {
        let (params, twice) = parse_params(
            b"client_id=a&redirect_uri=https%3A%2F%2Fa.test%2Fcb&redirect_uri=https%3A%2F%2Fevil.test%2Fcb",
        );
        assert_eq!(twice, vec!["redirect_uri".to_owned()]);
        assert_eq!(params["redirect_uri"], "https://a.test/cb");
        let (_, none) = parse_params(b"a=1&b=2");
        assert!(none.is_empty());
    }

    #[test]
    fn locations_keep_the_registered_query_and_add_ours() {
        let at = location(
            "https://app.test/cb?tenant=1",
            &[
                ("code", Some("abc")),
                ("state", None),
                ("iss", Some("https://id.test")),
            ],
        );
        assert_eq!(
            at,
            "https://app.test/cb?tenant=1&code=abc&iss=https%3A%2F%2Fid.test"
        );
    }
}
