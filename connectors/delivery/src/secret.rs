//! Credentials: named in config by where they are (an environment variable
//! or a file), never by value, and never printed.

use std::path::PathBuf;

use serde::Deserialize;

/// Where a secret is: `{ env = "TWILIO_AUTH_TOKEN" }` or `{ file = "/run/secrets/twilio" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub file: Option<PathBuf>,
}

/// A secret's value; Debug and Display hide it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl SecretRef {
    pub fn env(name: &str) -> Self {
        SecretRef { env: Some(name.into()), file: None }
    }

    /// Reads it; the error names where it looked, never a value.
    pub fn resolve(&self) -> Result<Secret, String> {
        let value = match (&self.env, &self.file) {
            (Some(name), None) => std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))?,
            (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| format!("secret file {}: {e}", path.display()))?,
            _ => return Err("a secret is `{ env = \"NAME\" }` or `{ file = \"PATH\" }`".into()),
        };
        let value = value.trim().to_string();
        if value.is_empty() {
            return Err(format!("secret from {} is empty", self.env.as_deref().map_or_else(|| "file".to_string(), |n| format!("${n}"))));
        }
        Ok(Secret(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_from_env_or_file_and_never_prints_the_value() {
        // SAFETY: this test alone uses this variable.
        unsafe { std::env::set_var("NOTIFLOW_TEST_SECRET_A", " s3cr3t\n") };
        let secret = SecretRef::env("NOTIFLOW_TEST_SECRET_A").resolve().unwrap();
        assert_eq!(secret.expose(), "s3cr3t");
        assert!(!format!("{secret:?}").contains("s3cr3t"));
        let missing = SecretRef::env("NOTIFLOW_TEST_SECRET_MISSING").resolve().unwrap_err();
        assert!(missing.contains("NOTIFLOW_TEST_SECRET_MISSING"), "{missing}");
        let path = std::env::temp_dir().join(format!("notiflow-secret-{}", std::process::id()));
        std::fs::write(&path, "from-file\n").unwrap();
        let from_file = SecretRef { env: None, file: Some(path.clone()) }.resolve().unwrap();
        assert_eq!(from_file.expose(), "from-file");
        std::fs::remove_file(path).unwrap();
        assert!(SecretRef { env: None, file: None }.resolve().is_err());
    }
}
