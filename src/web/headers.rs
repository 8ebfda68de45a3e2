//! Security headers on every response.

use axum::http::{HeaderName, HeaderValue, header};
use tower_http::set_header::SetResponseHeaderLayer;

/// The policy without allowed hosts (a header value cannot fail to be built from it).
const FALLBACK_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
    object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The Content-Security-Policy, with `form-action` also naming the allowed hosts (any
/// port, as `allowed_hosts` compares none): Chromium applies `form-action` to the
/// redirect after a form is posted, so without them the sign-in's, the two-factor
/// step's and sign-out's 303 back to a protected application would be blocked.
fn csp(allowed_hosts: &[String]) -> String {
    csp_with(allowed_hosts, &[])
}

/// The policy, with `form-action` also naming `sources` (OpenID clients' redirect
/// origins, already reduced to what a CSP source may hold).
pub fn csp_with(allowed_hosts: &[String], sources: &[String]) -> String {
    let mut form_action = String::from("'self'");
    for source in sources {
        form_action.push(' ');
        form_action.push_str(source);
    }
    for host in allowed_hosts.iter().map(|h| h.trim().to_ascii_lowercase()) {
        // Only what a host pattern can hold, so nothing else enters the policy
        // (config start-up has refused any other entry already).
        let plain = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '*'));
        if plain {
            form_action.push_str(&format!(" {host}:*"));
        }
    }
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
         object-src 'none'; base-uri 'none'; form-action {form_action}; frame-ancestors 'none'"
    )
}

/// The layers, outermost last; each only sets its header when a handler has not.
pub fn layers(allowed_hosts: &[String]) -> [SetResponseHeaderLayer<HeaderValue>; 6] {
    let set = |name: HeaderName, value: &'static str| {
        SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
    };
    let policy = HeaderValue::from_str(&csp(allowed_hosts))
        .unwrap_or_else(|_| HeaderValue::from_static(FALLBACK_CSP));
    [
        SetResponseHeaderLayer::if_not_present(header::CONTENT_SECURITY_POLICY, policy),
        set(header::X_FRAME_OPTIONS, "DENY"),
        set(header::REFERRER_POLICY, "no-referrer"),
        set(header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        set(header::CACHE_CONTROL, "no-store"),
        set(
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_action_names_the_allowed_hosts_on_any_port() {
        assert!(csp(&[]).contains("form-action 'self';"));
        let policy = csp(&["app.example.com".into(), "*.Example.org".into()]);
        assert!(
            policy.contains("form-action 'self' app.example.com:* *.example.org:*;"),
            "{policy}"
        );
        let policy = csp(&["evil.com; script-src *".into()]);
        assert!(policy.contains("form-action 'self';"), "{policy}");
    }
}
