//! Message encryption for Web Push (RFC 8291 over RFC 8188 `aes128gcm`):
//! ECDH between a fresh sender key and the subscription's `p256dh` key,
//! HKDF-SHA256 keyed by the subscription's `auth` secret, one AES-128-GCM
//! record.

use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::agreement::{ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey, agree_ephemeral};
use ring::hkdf::{HKDF_SHA256, KeyType, Salt};
use ring::rand::{SecureRandom, SystemRandom};

/// Record size announced in the header (one record carries the whole message).
const RECORD_SIZE: u32 = 4096;
/// Largest plaintext push services must accept (4096 minus header, tag and padding delimiter).
pub const MAX_PLAINTEXT: usize = 3993;

struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn hkdf(salt: &[u8], secret: &[u8], info: &[&[u8]], len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    Salt::new(HKDF_SHA256, salt).extract(secret).expand(info, Len(len)).and_then(|okm| okm.fill(&mut out)).expect("HKDF lengths are fixed and valid");
    out
}

/// (content key, nonce) for a message (RFC 8291 section 3.4, RFC 8188 section 2.2-2.3).
fn content_keys(ecdh_secret: &[u8], auth: &[u8], ua_public: &[u8], as_public: &[u8], salt: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let ikm = hkdf(auth, ecdh_secret, &[b"WebPush: info\0", ua_public, as_public], 32);
    (hkdf(salt, &ikm, &[b"Content-Encoding: aes128gcm\0"], 16), hkdf(salt, &ikm, &[b"Content-Encoding: nonce\0"], 12))
}

/// The body for given keys and salt: `salt | rs | idlen | as_public | AES-GCM(plaintext | 0x02)`.
pub fn seal(plaintext: &[u8], ecdh_secret: &[u8], auth: &[u8], ua_public: &[u8], as_public: &[u8], salt: &[u8]) -> Vec<u8> {
    let (cek, nonce) = content_keys(ecdh_secret, auth, ua_public, as_public, salt);
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &cek).expect("16-byte key"));
    let mut record = plaintext.to_vec();
    record.push(2); // last record, no padding
    key.seal_in_place_append_tag(Nonce::try_assume_unique_for_key(&nonce).expect("12-byte nonce"), Aad::empty(), &mut record).expect("one record fits");
    let mut body = Vec::with_capacity(16 + 4 + 1 + as_public.len() + record.len());
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(as_public.len() as u8);
    body.extend_from_slice(as_public);
    body.extend_from_slice(&record);
    body
}

/// Encrypts `plaintext` for a subscription (`ua_public` = p256dh, 65 bytes; `auth`, 16 bytes).
pub fn encrypt(plaintext: &[u8], ua_public: &[u8], auth: &[u8]) -> Result<Vec<u8>, String> {
    if ua_public.len() != 65 || ua_public[0] != 4 {
        return Err("p256dh is not an uncompressed P-256 point".into());
    }
    if auth.len() != 16 {
        return Err("auth secret is not 16 bytes".into());
    }
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(format!("payload of {} bytes exceeds {MAX_PLAINTEXT}", plaintext.len()));
    }
    let rng = SystemRandom::new();
    let private = EphemeralPrivateKey::generate(&ECDH_P256, &rng).map_err(|_| "key generation failed")?;
    let as_public = private.compute_public_key().map_err(|_| "public key")?.as_ref().to_vec();
    let mut salt = [0u8; 16];
    rng.fill(&mut salt).map_err(|_| "no randomness")?;
    agree_ephemeral(private, &UnparsedPublicKey::new(&ECDH_P256, ua_public), |secret| seal(plaintext, secret, auth, ua_public, &as_public, &salt))
        .map_err(|_| "p256dh is not a valid P-256 public key".into())
}

/// Decrypts a body given the receiver's side of the ECDH (`agree` gets the
/// sender's public key and returns the shared secret): what a browser does.
pub fn open(body: &[u8], ua_public: &[u8], auth: &[u8], agree: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>) -> Result<Vec<u8>, String> {
    if body.len() < 21 {
        return Err("body shorter than its header".into());
    }
    let (salt, id_len) = (&body[..16], body[20] as usize);
    let (as_public, ciphertext) = body[21..].split_at_checked(id_len).ok_or("truncated key id")?;
    let (cek, nonce) = content_keys(&agree(as_public)?, auth, ua_public, as_public, salt);
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &cek).expect("16-byte key"));
    let mut record = ciphertext.to_vec();
    let plain = key.open_in_place(Nonce::try_assume_unique_for_key(&nonce).expect("12-byte nonce"), Aad::empty(), &mut record).map_err(|_| "authentication failed")?;
    match plain.iter().rposition(|b| *b != 0) {
        Some(end) if plain[end] == 2 => Ok(plain[..end].to_vec()),
        _ => Err("no last-record delimiter".into()),
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    fn b64(text: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(text).unwrap()
    }

    /// RFC 8291 section 5 and Appendix A, from the shared ECDH secret on (ring keeps
    /// ECDH private keys ephemeral, so the example's fixed sender key cannot be loaded).
    #[test]
    fn the_rfc_8291_example_encrypts_to_the_published_body() {
        let ua_public = b64("BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4");
        let as_public = b64("BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8");
        let (auth, salt) = (b64("BTBZMqHH6r4Tts7J_aSIgg"), b64("DGv6ra1nlYgDCS1FRnbzlw"));
        let secret = b64("kyrL1jIIOHEzg3sM2ZWRHDRB62YACZhhSlknJ672kSs");
        let body = seal(b"When I grow up, I want to be a watermelon", &secret, &auth, &ua_public, &as_public, &salt);
        let expected = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN";
        assert_eq!(URL_SAFE_NO_PAD.encode(&body), expected);
        let opened = open(&body, &ua_public, &auth, |sender| {
            assert_eq!(sender, as_public.as_slice());
            Ok(secret.clone())
        });
        assert_eq!(opened.unwrap(), b"When I grow up, I want to be a watermelon");
        assert!(open(&body, &ua_public, &b64("AAAAAAAAAAAAAAAAAAAAAA"), |_| Ok(secret.clone())).is_err(), "another auth secret cannot open it");
    }

    #[test]
    fn bad_subscription_keys_are_refused() {
        assert!(encrypt(b"x", &[4; 10], &[0; 16]).unwrap_err().contains("p256dh"));
        assert!(encrypt(b"x", &[4; 65], &[0; 3]).unwrap_err().contains("auth"));
        assert!(encrypt(b"x", &[4; 65], &[0; 16]).unwrap_err().contains("valid P-256"), "not a point on the curve");
        assert!(encrypt(&[0; MAX_PLAINTEXT + 1], &[4; 65], &[0; 16]).unwrap_err().contains("exceeds"));
    }
}
