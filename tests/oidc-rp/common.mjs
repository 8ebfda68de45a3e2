// What both relying-party scripts share: the settings the Rust test passes in the
// environment, the line protocol on stdin/stdout, and a fetch that records what the
// provider answered (status, WWW-Authenticate, body), so a refusal can be reported as
// the provider sent it, whatever the library makes of it.
//
// Protocol: every line the script prints is one JSON object.
//   {"browser": URL, "as": "allow"|"deny"|"anonymous"}   the test opens URL as a person
//       would (signed in, or not for "anonymous") and answers with one line: the URL
//       the browser ended up at (the redirect to redirect_uri or post_logout_redirect_uri).
//   {"result": {...}}                                     the script's findings; last line.
//   {"error": {...}}                                      an unexpected failure; last line.
import { createInterface } from 'node:readline';

/** A setting from the environment; `required` ones end the script when missing. */
export function setting(name, required = true) {
  const value = process.env[name];
  if (required && (value === undefined || value === '')) {
    fail(new Error(`${name} is not set`));
  }
  return value === '' ? undefined : value;
}

export const settings = {
  issuer: setting('OIDC_ISSUER'),
  clientId: setting('OIDC_CLIENT_ID'),
  clientSecret: setting('OIDC_CLIENT_SECRET', false),
  redirectUri: setting('OIDC_REDIRECT_URI'),
  postLogoutRedirectUri: setting('OIDC_POST_LOGOUT_REDIRECT_URI', false),
  // client_secret_basic | client_secret_post | none
  clientAuth: setting('OIDC_CLIENT_AUTH', false) ?? 'client_secret_basic',
  // RS256 | ES256 | EdDSA: what the client is registered with; anything else is refused.
  signingAlg: setting('OIDC_SIGNING_ALG', false) ?? 'RS256',
  scope: setting('OIDC_SCOPE', false) ?? 'openid email profile offline_access',
};

const lines = createInterface({ input: process.stdin, terminal: false })[Symbol.asyncIterator]();

function emit(object) {
  process.stdout.write(`${JSON.stringify(object)}\n`);
}

/**
 * Hands `url` to the test's browser and returns the URL it ended at. `as`: "allow" (a
 * signed-in person who allows), "deny" (who denies on the consent page), "anonymous"
 * (a browser with no latchkey session).
 */
export async function browse(url, as = 'allow') {
  emit({ browser: url.toString(), as });
  const { value, done } = await lines.next();
  if (done) {
    throw new Error('the test closed stdin before answering a browser step');
  }
  return new URL(value.trim());
}

export function result(findings) {
  emit({ result: findings });
  process.exit(0);
}

export function fail(error) {
  emit({ error: describe(error) });
  process.exit(1);
}

/** An error as JSON: the library's class, code and message, and the OAuth error fields. */
export function describe(error) {
  if (!(error instanceof Error)) {
    return { name: typeof error, message: String(error) };
  }
  const out = { name: error.name, message: error.message };
  for (const field of ['code', 'error', 'error_description', 'status']) {
    if (error[field] !== undefined) out[field] = error[field];
  }
  if (error.cause instanceof Error) {
    out.cause = describe(error.cause);
  } else if (error.cause?.error !== undefined) {
    out.cause = { error: error.cause.error };
  }
  return out;
}

/**
 * A fetch that remembers the last answer of each endpoint path: status, the
 * WWW-Authenticate and Cache-Control headers, and the body (JSON when it parses).
 * `tamper(url, text)` may rewrite a body before the library sees it.
 */
export function recordingFetch(tamper) {
  const seen = new Map();
  const fetcher = async (url, options) => {
    const response = await fetch(url, options);
    const text = await response.text();
    let body = text;
    try {
      body = JSON.parse(text);
    } catch {
      // not JSON: kept as text
    }
    seen.set(new URL(url).pathname, {
      status: response.status,
      www_authenticate: response.headers.get('www-authenticate'),
      cache_control: response.headers.get('cache-control'),
      content_type: response.headers.get('content-type'),
      body,
    });
    const delivered = tamper ? tamper(url, text) : text;
    return new Response(response.status === 204 || response.status === 304 ? null : delivered, {
      status: response.status,
      statusText: response.statusText,
      headers: response.headers,
    });
  };
  fetcher.last = (endpoint) => seen.get(new URL(endpoint).pathname);
  return fetcher;
}

/** The decoded header and payload of a JWS, without checking anything. */
export function peek(jws) {
  const [header, payload] = jws.split('.');
  const decode = (part) => JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
  return { header: decode(header), claims: decode(payload) };
}

process.on('unhandledRejection', fail);
