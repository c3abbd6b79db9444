//! Readers several tables share: the environment lookup, secrets given inline or by an
//! environment variable, and a `listen` address guarded by a bearer token (admin, push).

use std::net::SocketAddr;

use super::document::Section;

/// Looks up environment variables.
pub(super) type Env<'e> = &'e dyn Fn(&str) -> Option<String>;

/// `listen` and its bearer `token` / `token_env` (admin, push): a token of at least 16
/// characters, required when the address is not loopback.
pub(super) fn guarded_listener(
    t: &Section<'_, '_>,
    env: Env<'_>,
    example: &str,
) -> (Option<SocketAddr>, Option<String>) {
    let listen = t
        .required_string("listen")
        .and_then(|l| match l.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                t.problem(
                    "listen",
                    format!("{l:?} is not an IP:port address; write e.g. \"{example}\""),
                );
                None
            }
        });
    let token = secret(t, "token", false, env);
    if token.as_ref().is_some_and(|t| t.len() < 16) {
        t.problem("token", "use at least 16 characters");
    }
    if let Some(addr) = listen
        && !addr.ip().is_loopback()
        && token.is_none()
        && !t.has("token")
        && !t.has("token_env")
    {
        t.problem(
            "token",
            format!(
                "required when {} is not a loopback address",
                t.key("listen")
            ),
        );
    }
    (listen, token)
}

/// A secret given inline (`name`) or by the environment variable `name_env` names.
pub(super) fn secret(
    t: &Section<'_, '_>,
    name: &str,
    required: bool,
    env: Env<'_>,
) -> Option<String> {
    let env_key = format!("{name}_env");
    match (t.string(name), t.string(&env_key)) {
        (Some(_), Some(_)) => {
            t.problem(name, format!("set either {name} or {env_key}, not both"));
            None
        }
        (Some(v), None) if v.is_empty() => {
            t.problem(name, "is empty");
            None
        }
        (Some(v), None) => Some(v),
        (None, Some(var)) => match env(&var) {
            Some(v) if !v.is_empty() => Some(v),
            Some(_) => {
                t.problem(&env_key, format!("environment variable {var} is empty"));
                None
            }
            None => {
                t.problem(&env_key, format!("environment variable {var} is not set"));
                None
            }
        },
        (None, None) => {
            if required && !t.has(name) && !t.has(&env_key) {
                t.problem(name, format!("missing: set {name} or {env_key}"));
            }
            None
        }
    }
}
