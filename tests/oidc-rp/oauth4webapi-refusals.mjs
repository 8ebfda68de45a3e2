// The ways a sign-in must fail, each driven with oauth4webapi (the low-level library
// under openid-client) against latchkey: a wrong state or nonce (refused by the relying
// party, as RFC 6749 §10.12 and OpenID Connect Core §3.1.3.7 require), a wrong or
// missing code_verifier (RFC 7636 §4.6: invalid_grant), a replayed code (RFC 6749 §4.1.2:
// invalid_grant, and what the first redemption issued is revoked), a wrong client
// secret (RFC 6749 §5.2: invalid_client, 401 with WWW-Authenticate for Basic), a
// tampered ID token (its JWS signature fails against the JWKS), an unknown grant type,
// a redirect_uri that differs from the authorization's, prompt=none without a session
// (login_required), Deny on the consent page (access_denied), and a response_type other
// than code (unsupported_response_type). Prints {"result": {"<case>": {...}}}.
import * as oauth from 'oauth4webapi';
import { browse, describe, fail, peek, recordingFetch, result, settings } from './common.mjs';

const fetcher = recordingFetch();
// A token response whose ID token is rewritten when `tamper.with` is set.
const tamper = { with: undefined };
const tamperingFetch = recordingFetch((url, text) => {
  if (tamper.with === undefined) return text;
  try {
    const body = JSON.parse(text);
    if (typeof body.id_token === 'string') body.id_token = tamper.with(body.id_token);
    return JSON.stringify(body);
  } catch {
    return text;
  }
});
const common = { [oauth.allowInsecureRequests]: true, [oauth.customFetch]: fetcher };

const issuer = new URL(settings.issuer);
const as = await oauth
  .discoveryRequest(issuer, common)
  .then((response) => oauth.processDiscoveryResponse(issuer, response));
const client = {
  client_id: settings.clientId,
  id_token_signed_response_alg: settings.signingAlg,
};
const authentication = (secret = settings.clientSecret, method = settings.clientAuth) =>
  ({
    client_secret_basic: () => oauth.ClientSecretBasic(secret),
    client_secret_post: () => oauth.ClientSecretPost(secret),
    none: () => oauth.None(),
  })[method]();

/** A fresh authorization as a person would give it: its callback and its secrets. */
async function authorize({ as: who = 'allow', extra = {} } = {}) {
  const codeVerifier = oauth.generateRandomCodeVerifier();
  const nonce = oauth.generateRandomNonce();
  const state = oauth.generateRandomState();
  const url = new URL(as.authorization_endpoint);
  const parameters = {
    client_id: settings.clientId,
    redirect_uri: settings.redirectUri,
    response_type: 'code',
    scope: settings.scope,
    code_challenge: await oauth.calculatePKCECodeChallenge(codeVerifier),
    code_challenge_method: 'S256',
    nonce,
    state,
    ...extra,
  };
  for (const [name, value] of Object.entries(parameters)) url.searchParams.set(name, value);
  const callback = await browse(url, who);
  return { callback, codeVerifier, nonce, state };
}

/** Redeems `callback`'s code; returns the raw token-endpoint request's Response. */
function redeem(callback, state, codeVerifier, options = {}) {
  const parameters = oauth.validateAuthResponse(as, client, callback, state);
  return oauth.authorizationCodeGrantRequest(
    as,
    client,
    options.authentication ?? authentication(),
    parameters,
    options.redirectUri ?? settings.redirectUri,
    codeVerifier,
    { ...common, [oauth.customFetch]: options.fetch ?? fetcher },
  );
}

/** `run()` must throw: how it was refused, and what the token endpoint last answered. */
async function refusal(run, endpoint = as.token_endpoint, fetchUsed = fetcher) {
  const answer = () => (endpoint === null ? {} : { answer: fetchUsed.last(endpoint) });
  try {
    await run();
    return { refused: false, ...answer() };
  } catch (error) {
    return { refused: true, ...describe(error), ...answer() };
  }
}

async function userinfoStatus(accessToken) {
  const response = await oauth.userInfoRequest(as, client, accessToken, common);
  return { status: response.status, www_authenticate: response.headers.get('www-authenticate') };
}

const cases = {};

// The state that comes back is not the one this browser sent: the relying party stops
// before any code is redeemed.
{
  const { callback, codeVerifier } = await authorize();
  cases.wrong_state = await refusal(() => redeem(callback, oauth.generateRandomState(), codeVerifier));
}

// The ID token carries the nonce of the request; the relying party expecting another
// refuses the token response.
{
  const { callback, codeVerifier, nonce, state } = await authorize();
  const response = await redeem(callback, state, codeVerifier);
  const wrongNonce = oauth.generateRandomNonce();
  cases.wrong_nonce = await refusal(() =>
    oauth.processAuthorizationCodeResponse(as, client, response.clone(), { expectedNonce: wrongNonce }),
  );
  const body = await response.json();
  cases.wrong_nonce.id_token_nonce_is_the_one_sent = peek(body.id_token).claims.nonce === nonce;
}

// PKCE: another verifier, or none, for a code whose challenge was sent.
{
  const { callback, state } = await authorize();
  cases.wrong_code_verifier = await refusal(async () =>
    oauth.processAuthorizationCodeResponse(
      as,
      client,
      await redeem(callback, state, oauth.generateRandomCodeVerifier()),
      { requireIdToken: true },
    ),
  );
}
{
  const { callback, state } = await authorize();
  cases.missing_code_verifier = await refusal(async () =>
    oauth.processAuthorizationCodeResponse(as, client, await redeem(callback, state, oauth.nopkce), {
      requireIdToken: true,
    }),
  );
}

// The redirect_uri at the token endpoint must be the authorization's.
{
  const { callback, codeVerifier, state } = await authorize();
  cases.other_redirect_uri = await refusal(async () =>
    oauth.processAuthorizationCodeResponse(
      as,
      client,
      await redeem(callback, state, codeVerifier, { redirectUri: `${settings.redirectUri}/other` }),
      { requireIdToken: true },
    ),
  );
}

// A code redeemed twice: the second gets invalid_grant, and the tokens of the first
// stop working.
{
  const { callback, codeVerifier, nonce, state } = await authorize();
  const first = await oauth.processAuthorizationCodeResponse(
    as,
    client,
    await redeem(callback, state, codeVerifier),
    { expectedNonce: nonce },
  );
  const before = await userinfoStatus(first.access_token);
  cases.replayed_code = await refusal(async () =>
    oauth.processAuthorizationCodeResponse(as, client, await redeem(callback, state, codeVerifier), {
      expectedNonce: nonce,
    }),
  );
  cases.replayed_code.first_access_token_before = before;
  cases.replayed_code.first_access_token_after = await userinfoStatus(first.access_token);
  cases.replayed_code.first_refresh_token_after = await refusal(async () =>
    oauth.processRefreshTokenResponse(
      as,
      client,
      await oauth.refreshTokenGrantRequest(as, client, authentication(), first.refresh_token, common),
    ),
  );
}

// A wrong client secret, sent with HTTP Basic and in the form body; then the right one
// still redeems the code (a failed client authentication changes nothing).
if (settings.clientSecret !== undefined) {
  const { callback, codeVerifier, nonce, state } = await authorize();
  const wrong = `${settings.clientSecret}x`;
  for (const method of ['client_secret_basic', 'client_secret_post']) {
    cases[`wrong_client_secret_${method.slice('client_secret_'.length)}`] = await refusal(async () =>
      oauth.processAuthorizationCodeResponse(
        as,
        client,
        await redeem(callback, state, codeVerifier, { authentication: authentication(wrong, method) }),
        { expectedNonce: nonce },
      ),
    );
  }
  cases.right_secret_after_wrong_ones = await refusal(async () =>
    oauth.processAuthorizationCodeResponse(as, client, await redeem(callback, state, codeVerifier), {
      expectedNonce: nonce,
    }),
  );
}

// A tampered ID token: one claim changed, the signature kept. The claims alone pass;
// the JWS signature checked against the provider's JWKS does not.
{
  const { callback, codeVerifier, nonce, state } = await authorize();
  tamper.with = (jws) => {
    const [header, payload, signature] = jws.split('.');
    const claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
    claims.email = 'mallory@example.test';
    claims.sub = '00000000-0000-0000-0000-000000000001';
    return [header, Buffer.from(JSON.stringify(claims)).toString('base64url'), signature].join('.');
  };
  const response = await redeem(callback, state, codeVerifier, { fetch: tamperingFetch });
  tamper.with = undefined;
  const processed = await oauth.processAuthorizationCodeResponse(as, client, response, { expectedNonce: nonce });
  cases.tampered_id_token = await refusal(() =>
    oauth.validateApplicationLevelSignature(as, response, common),
  );
  cases.tampered_id_token.tampered_sub = oauth.getValidatedIdTokenClaims(processed).sub;
}
// An ID token re-headed as unsigned (alg "none"): refused before any key is looked at.
{
  const { callback, codeVerifier, nonce, state } = await authorize();
  tamper.with = (jws) => {
    const [, payload] = jws.split('.');
    const header = Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT' })).toString('base64url');
    return `${header}.${payload}.`;
  };
  const response = await redeem(callback, state, codeVerifier, { fetch: tamperingFetch });
  tamper.with = undefined;
  cases.unsigned_id_token = await refusal(() =>
    oauth.processAuthorizationCodeResponse(as, client, response, { expectedNonce: nonce }),
  );
}

// A grant type latchkey does not offer.
cases.unsupported_grant_type = await refusal(async () =>
  oauth.processGenericTokenEndpointResponse(
    as,
    client,
    await oauth.genericTokenEndpointRequest(
      as,
      client,
      authentication(),
      'password',
      new URLSearchParams({ username: 'ada@example.test', password: 'guess' }),
      common,
    ),
  ),
);

// prompt=none from a browser with no latchkey session: back to the client with
// login_required (and the state and iss), never a sign-in page.
{
  const { callback, state } = await authorize({ as: 'anonymous', extra: { prompt: 'none' } });
  cases.login_required = await refusal(
    () => oauth.validateAuthResponse(as, client, callback, state),
    null,
  );
  cases.login_required.iss = callback.searchParams.get('iss');
}

// Deny on the consent page: access_denied.
{
  const { callback, state } = await authorize({ as: 'deny' });
  cases.access_denied = await refusal(
    () => oauth.validateAuthResponse(as, client, callback, state),
    null,
  );
  cases.access_denied.iss = callback.searchParams.get('iss');
}

// Another response_type: unsupported_response_type, sent back to the client (in the
// query, or in the fragment where a provider answers a token request there).
{
  const { callback, state } = await authorize({ extra: { response_type: 'token' } });
  const query = callback.searchParams;
  const fragment = new URLSearchParams(callback.hash.slice(1));
  const params = query.has('error') ? query : fragment;
  cases.unsupported_response_type = {
    refused: params.has('error') && !query.has('code') && !fragment.has('access_token'),
    error: params.get('error'),
    state_returned: params.get('state') === state,
    iss: params.get('iss'),
  };
}

result(cases);
