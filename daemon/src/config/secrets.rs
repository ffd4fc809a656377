//! Secrets: where one comes from (a file, an environment variable, a
//! systemd credential), and reading it. A secret written inline is refused
//! without being quoted, and no message here contains a secret's value.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where one secret comes from: exactly one of `file`, `env`, `credential`.
#[derive(Debug, Clone, Default)]
pub struct SecretSource {
    /// A file whose content (trailing newline removed) is the secret.
    pub file: Option<PathBuf>,
    /// An environment variable.
    pub env: Option<String>,
    /// A systemd credential: `$CREDENTIALS_DIRECTORY/<name>` (`LoadCredential=`).
    pub credential: Option<String>,
}

/// The fields of a [`SecretSource`] as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretFields {
    file: Option<PathBuf>,
    env: Option<String>,
    credential: Option<String>,
}

/// What the file says where a source was expected: serde's own message
/// would quote the value, and a value there is a secret written inline.
const INLINE_SECRET: &str = "expected one of { file: PATH }, { env: NAME } or { credential: NAME } (a secret is never written inline)";

impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Source;

        impl<'de> serde::de::Visitor<'de> for Source {
            type Value = SecretSource;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(INLINE_SECRET)
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<SecretSource, A::Error> {
                let fields =
                    SecretFields::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(SecretSource {
                    file: fields.file,
                    env: fields.env,
                    credential: fields.credential,
                })
            }

            // Anything else is refused without repeating it.
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<SecretSource, E> {
                Err(E::custom(INLINE_SECRET))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<SecretSource, E> {
                Err(E::custom(INLINE_SECRET))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<SecretSource, E> {
                Err(E::custom(INLINE_SECRET))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<SecretSource, E> {
                Err(E::custom(INLINE_SECRET))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<SecretSource, E> {
                Err(E::custom(INLINE_SECRET))
            }
            fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<SecretSource, E> {
                Err(E::custom(INLINE_SECRET))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<SecretSource, E> {
                Err(E::custom(INLINE_SECRET))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                _: A,
            ) -> Result<SecretSource, A::Error> {
                Err(serde::de::Error::custom(INLINE_SECRET))
            }
        }

        deserializer.deserialize_any(Source)
    }
}

pub(super) fn read_secret(
    source: &SecretSource,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
    credentials: Option<&Path>,
) -> Result<String, String> {
    let from_file = |path: PathBuf| {
        std::fs::read_to_string(&path)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
            .map_err(|e| format!("cannot read '{}': {e}", path.display()))
    };
    match (&source.file, &source.env, &source.credential) {
        (Some(path), None, None) => from_file(resolve(path.clone())),
        (None, Some(var), None) => {
            std::env::var(var).map_err(|_| format!("environment variable '{var}' is not set"))
        }
        (None, None, Some(name)) => match credentials {
            Some(dir) => from_file(dir.join(name)),
            None => Err(format!(
                "credential '{name}': CREDENTIALS_DIRECTORY is not set (use LoadCredential= in the unit)"
            )),
        },
        _ => Err("give exactly one of 'file', 'env' or 'credential'".to_string()),
    }
}
