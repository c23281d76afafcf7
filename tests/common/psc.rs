//! Pro Santé Connect as the tests stand it up: a wiremock server publishes
//! the issuer's keys, and the gateway is told to trust it.

use apa_gateway::config::Config;

/// The issuer and audience the tests' professional tokens carry (PSC's
/// test realm and a client id of the gateway there).
pub const ISSUER: &str = "https://auth.bas.psc.esante.gouv.fr/auth/realms/esante-wallet";
pub const AUDIENCE: &str = "apa-gateway-bas";

/// Settings that trust the issuer whose keys `issuer_uri` serves at
/// `/certs`; `scope`: the SMART scopes professionals get, when not the
/// default.
pub fn settings(issuer_uri: &str, scope: Option<&str>) -> impl FnOnce(&mut Config) + use<> {
    let jwks_url = format!("{issuer_uri}/certs");
    let scope = scope.map(str::to_string);
    move |c: &mut Config| {
        c.oidc_issuer = Some(ISSUER.into());
        c.oidc_jwks_url = Some(jwks_url);
        c.oidc_audience = Some(AUDIENCE.into());
        if let Some(scope) = scope {
            c.oidc_scope = scope;
        }
    }
}
