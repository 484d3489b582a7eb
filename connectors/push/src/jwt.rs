//! Compact JWS (JWT) signing with ring: RS256 for Google service accounts,
//! ES256 for APNs provider tokens.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, RSA_PKCS1_SHA256, RsaKeyPair};

pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The DER inside a PEM block (`-----BEGIN PRIVATE KEY-----` ...).
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, String> {
    let body: String = pem.lines().map(str::trim).filter(|l| !l.starts_with("-----") && !l.is_empty()).collect();
    STANDARD.decode(body).map_err(|e| format!("not a PEM key: {e}"))
}

/// A signing key of either kind, parsed once.
pub enum Signer {
    Rs256(RsaKeyPair),
    Es256(EcdsaKeyPair),
}

impl Signer {
    /// An RSA key in PKCS#8 PEM (Google service accounts).
    pub fn rs256(pem: &str) -> Result<Self, String> {
        RsaKeyPair::from_pkcs8(&pem_to_der(pem)?).map(Signer::Rs256).map_err(|e| format!("RSA key: {e}"))
    }

    /// A P-256 key in PKCS#8 PEM (Apple `.p8` files).
    pub fn es256(pem: &str) -> Result<Self, String> {
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pem_to_der(pem)?, &SystemRandom::new())
            .map(Signer::Es256)
            .map_err(|e| format!("P-256 key: {e}"))
    }

    /// The public key: uncompressed point for P-256 (VAPID's `k`), DER RSAPublicKey for RSA.
    pub fn public_key(&self) -> &[u8] {
        use ring::signature::KeyPair;
        match self {
            Signer::Rs256(key) => key.public().as_ref(),
            Signer::Es256(key) => key.public_key().as_ref(),
        }
    }

    /// `header.claims.signature`, each part base64url.
    pub fn jwt(&self, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        let signing_input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
        let rng = SystemRandom::new();
        let signature = match self {
            Signer::Rs256(key) => {
                let mut signature = vec![0; key.public().modulus_len()];
                key.sign(&RSA_PKCS1_SHA256, &rng, signing_input.as_bytes(), &mut signature).expect("RSA signing with a parsed key");
                signature
            }
            // Fixed-size r||s, as JWS ES256 wants it.
            Signer::Es256(key) => key.sign(&rng, signing_input.as_bytes()).expect("ECDSA signing with a parsed key").as_ref().to_vec(),
        };
        format!("{signing_input}.{}", b64url(&signature))
    }
}
