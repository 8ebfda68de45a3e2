// The whole life of a sign-in as npm's openid-client (an OpenID-certified relying
// party) lives it against latchkey: discovery, the authorization code flow with PKCE
// (S256), nonce and state, the `iss` response parameter checked (RFC 9207), the ID
// token's signature verified against the provider's JWKS for the client's algorithm,
// userinfo, refresh (rotation), introspection, revocation, and RP-initiated logout.
// Prints one {"result": …} line of findings for tests/it/oidc_rp.rs to assert.
import * as client from 'openid-client';
import * as jose from 'jose';
import { browse, describe, fail, peek, recordingFetch, result, settings } from './common.mjs';

async function refused(promise) {
  try {
    await promise;
    return { refused: false };
  } catch (error) {
    return { refused: true, ...describe(error) };
  }
}

async function main() {
  const fetcher = recordingFetch();
  const metadata = {
    id_token_signed_response_alg: settings.signingAlg,
    token_endpoint_auth_method: settings.clientAuth,
  };
  if (settings.clientSecret !== undefined) metadata.client_secret = settings.clientSecret;
  const authentication = {
    client_secret_basic: () => client.ClientSecretBasic(settings.clientSecret),
    client_secret_post: () => client.ClientSecretPost(settings.clientSecret),
    none: () => client.None(),
  }[settings.clientAuth]();

  // Discovery: the issuer in the document must be the one asked for (openid-client
  // refuses it otherwise).
  const config = await client.discovery(
    new URL(settings.issuer),
    settings.clientId,
    metadata,
    authentication,
    { execute: [client.allowInsecureRequests, client.enableNonRepudiationChecks], [client.customFetch]: fetcher },
  );
  const server = config.serverMetadata();

  // Authorization: PKCE S256, a nonce and a state, every one checked on the way back.
  const codeVerifier = client.randomPKCECodeVerifier();
  const codeChallenge = await client.calculatePKCECodeChallenge(codeVerifier);
  const nonce = client.randomNonce();
  const state = client.randomState();
  const authorizeUrl = client.buildAuthorizationUrl(config, {
    redirect_uri: settings.redirectUri,
    scope: settings.scope,
    code_challenge: codeChallenge,
    code_challenge_method: 'S256',
    nonce,
    state,
  });
  const callback = await browse(authorizeUrl);
  const tokens = await client.authorizationCodeGrant(config, callback, {
    pkceCodeVerifier: codeVerifier,
    expectedNonce: nonce,
    expectedState: state,
    idTokenExpected: true,
  });
  const tokenAnswer = fetcher.last(server.token_endpoint);
  const idToken = peek(tokens.id_token);
  const claims = tokens.claims();

  // The ID token verified once more, independently: jose against the JWKS, accepting
  // only the client's algorithm.
  const jwks = jose.createRemoteJWKSet(new URL(server.jwks_uri));
  const verified = await jose.jwtVerify(tokens.id_token, jwks, {
    issuer: settings.issuer,
    audience: settings.clientId,
    algorithms: [settings.signingAlg],
  });
  const jwksDocument = await (await fetch(server.jwks_uri)).json();
  const otherAlgorithms = ['RS256', 'ES256', 'EdDSA'].filter((alg) => alg !== settings.signingAlg);
  const otherAlgorithm = await refused(
    jose.jwtVerify(tokens.id_token, jwks, { algorithms: otherAlgorithms }),
  );

  const userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub);

  const introspection = await client.tokenIntrospection(config, tokens.access_token);

  // Refresh: new tokens, the refresh token rotated, the new access token works.
  const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token);
  const refreshedUserinfo = await client.fetchUserInfo(config, refreshed.access_token, claims.sub);

  // Revocation (RFC 7009): the revoked access token no longer opens userinfo; the
  // revoked refresh token no longer refreshes.
  await client.tokenRevocation(config, refreshed.access_token, { token_type_hint: 'access_token' });
  const afterAccessRevoked = await refused(
    client.fetchUserInfo(config, refreshed.access_token, claims.sub),
  );
  const userinfoAnswer = fetcher.last(server.userinfo_endpoint);
  const introspectionAfter = await client.tokenIntrospection(config, refreshed.access_token);
  await client.tokenRevocation(config, refreshed.refresh_token, { token_type_hint: 'refresh_token' });
  const afterRefreshRevoked = await refused(client.refreshTokenGrant(config, refreshed.refresh_token));
  // Revoking what is already dead, or was never a token, still answers 200 (RFC 7009 §2.2).
  await client.tokenRevocation(config, 'not-a-token-latchkey-ever-issued');

  // RP-initiated logout: the end-session URL, followed by the browser, comes back to
  // post_logout_redirect_uri with the state as sent.
  let endSession = null;
  if (settings.postLogoutRedirectUri !== undefined) {
    const logoutState = client.randomState();
    const endSessionUrl = client.buildEndSessionUrl(config, {
      id_token_hint: tokens.id_token,
      post_logout_redirect_uri: settings.postLogoutRedirectUri,
      state: logoutState,
    });
    const landed = await browse(endSessionUrl);
    endSession = {
      url: endSessionUrl.href,
      landed: landed.href,
      at_post_logout_redirect_uri: `${landed.origin}${landed.pathname}` === settings.postLogoutRedirectUri,
      state_returned: landed.searchParams.get('state') === logoutState,
    };
  }

  result({
    discovery: server,
    authorize_url: authorizeUrl.href,
    callback: {
      iss: callback.searchParams.get('iss'),
      state_returned: callback.searchParams.get('state') === state,
      code_length: (callback.searchParams.get('code') ?? '').length,
    },
    token_response: {
      token_type: tokens.token_type,
      expires_in: tokens.expires_in,
      scope: tokens.scope,
      has_refresh_token: typeof tokens.refresh_token === 'string',
      cache_control: tokenAnswer?.cache_control,
    },
    id_token: { header: idToken.header, claims },
    nonce_matches: claims.nonce === nonce,
    jwks_verified: { alg: verified.protectedHeader.alg, kid: verified.protectedHeader.kid },
    jwks_kids: jwksDocument.keys.map((key) => ({ kid: key.kid, kty: key.kty, alg: key.alg, use: key.use, has_private: 'd' in key })),
    other_algorithm: otherAlgorithm,
    userinfo,
    introspection: { active: introspection.active, sub: introspection.sub, client_id: introspection.client_id },
    refresh: {
      rotated: typeof refreshed.refresh_token === 'string' && refreshed.refresh_token !== tokens.refresh_token,
      new_access_token: refreshed.access_token !== tokens.access_token,
      id_token_sub: refreshed.id_token ? peek(refreshed.id_token).claims.sub : null,
      userinfo_sub: refreshedUserinfo.sub,
    },
    revoked_access_token: {
      userinfo: afterAccessRevoked,
      status: userinfoAnswer?.status,
      www_authenticate: userinfoAnswer?.www_authenticate,
      introspection_active: introspectionAfter.active,
    },
    revoked_refresh_token: afterRefreshRevoked,
    end_session: endSession,
  });
}

main().catch(fail);
