//! Signing webhook requests per Standard Webhooks 1.0 (issue 7; design `docs/alarms.md`).
//!
//! ```text
//! webhook-id:        <id, stable across retries of the same batch>
//! webhook-timestamp: <Unix seconds>
//! webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")> [v1,<...> ...]
//! ```
//! A secret is `whsec_` followed by the base64 of its key (24 random bytes here). While a secret
//! is being rotated, the request carries one signature per secret, space-separated.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// A new `whsec_` secret.
pub fn new_secret() -> String {
    let mut key = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut key);
    format!("whsec_{}", STANDARD.encode(key))
}

/// The key of a `whsec_` secret, `None` if it is not one.
pub fn key_of(secret: &str) -> Option<Vec<u8>> {
    let b64 = secret.strip_prefix("whsec_")?;
    let key = STANDARD.decode(b64).ok()?;
    (!key.is_empty()).then_some(key)
}

/// One `v1,<signature>` of the payload with one secret.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = key_of(secret)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// The three headers of a request signed with every secret in `secrets` (the current one and,
/// during a rotation, the previous).
pub fn headers(
    secrets: &[&str],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let sigs: Vec<String> = secrets
        .iter()
        .filter_map(|s| sign(s, id, timestamp, body))
        .collect();
    vec![
        ("webhook-id", id.to_string()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", sigs.join(" ")),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_specifications_example_signature() {
        // The example in the Standard Webhooks specification and its reference libraries.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(secret, id, 1614265330, body).unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    /// Verified by a second implementation written from the specification in Python's standard
    /// library (hmac, hashlib, base64), not by this module.
    #[test]
    fn signatures_verify_with_an_independent_implementation() {
        let (old, new) = (new_secret(), new_secret());
        let body = br#"{"Document":{"Msg":[{"topic":"t/AlarmStatus/a/b","replay":false}]}}"#;
        let h = headers(&[&new, &old], "batch_17_100", 1_795_000_000, body);
        let sig = &h[2].1;
        assert_eq!(sig.split(' ').count(), 2);
        let script = r#"
import base64, hashlib, hmac, sys
secret, msg_id, ts, body_hex, header = sys.argv[1:6]
key = base64.b64decode(secret.split("_", 1)[1])
signed = msg_id.encode() + b"." + ts.encode() + b"." + bytes.fromhex(body_hex)
expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
ok = any(hmac.compare_digest(expected, s.split(",", 1)[1]) for s in header.split(" ") if s.startswith("v1,"))
print("valid" if ok else "invalid")
"#;
        let hex: String = body.iter().map(|b| format!("{b:02x}")).collect();
        for (secret, want) in [
            (new.as_str(), "valid"),
            (old.as_str(), "valid"),
            ("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "invalid"),
        ] {
            let out = std::process::Command::new("python3")
                .args([
                    "-c",
                    script,
                    secret,
                    "batch_17_100",
                    "1795000000",
                    &hex,
                    sig,
                ])
                .output()
                .expect("python3 runs the independent verifier");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                want,
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // A changed body does not verify.
        let tampered = headers(&[&new], "batch_17_100", 1_795_000_000, b"{}");
        assert_ne!(
            tampered[2].1,
            sign(&new, "batch_17_100", 1_795_000_000, body).unwrap()
        );
    }

    #[test]
    fn secrets_are_whsec_and_24_bytes() {
        let s = new_secret();
        assert_eq!(key_of(&s).unwrap().len(), 24);
        assert!(key_of("nope").is_none() && key_of("whsec_!!").is_none());
        assert_ne!(new_secret(), s);
    }
}
