//! User tokens: the tenant's backend mints one per user (`notiflow inbox
//! token`), its app sends it with every inbox call. A token is the
//! HMAC-SHA256 of the tenant and user id under the server's secret, so it opens that
//! one inbox and nothing else, and the server keeps no token list.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use notiflow_delivery::Secret;
use sha2::Sha256;

pub struct UserTokens {
    secret: Secret,
}

impl UserTokens {
    pub fn new(secret: Secret) -> Result<Self, String> {
        if secret.expose().len() < 16 {
            return Err("the inbox token secret must be at least 16 characters".into());
        }
        Ok(UserTokens { secret })
    }

    fn mac(&self, tenant: &str, user: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.expose().as_bytes()).expect("HMAC takes any key length");
        // Length-prefixed, so ("acme/u", "1") and ("acme", "u/1") sign differently.
        mac.update(&(tenant.len() as u32).to_be_bytes());
        mac.update(tenant.as_bytes());
        mac.update(user.as_bytes());
        mac
    }

    pub fn mint(&self, tenant: &str, user: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(tenant, user).finalize().into_bytes())
    }

    /// Constant-time check of a presented token.
    pub fn verify(&self, tenant: &str, user: &str, token: &str) -> bool {
        let Ok(presented) = URL_SAFE_NO_PAD.decode(token.trim()) else { return false };
        self.mac(tenant, user).verify_slice(&presented).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_one_inbox_only() {
        let tokens = UserTokens::new(Secret::new("0123456789abcdef-secret")).unwrap();
        let token = tokens.mint("acme", "u1");
        assert!(tokens.verify("acme", "u1", &token));
        assert!(!tokens.verify("acme", "u2", &token));
        assert!(!tokens.verify("globex", "u1", &token));
        assert!(!tokens.verify("acme/u", "1", &tokens.mint("acme", "u/1")), "tenant and user cannot trade characters");
        assert!(!tokens.verify("acme", "u1", "not-base64!"));
        assert!(UserTokens::new(Secret::new("short")).is_err());
    }
}
