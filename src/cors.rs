//! CORS as the product documents it: fixed allow headers whenever `Origin` is present,
//! on every status, and local answers to preflights.

use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
    VARY,
};
use http::{HeaderMap, HeaderValue, Method};

use crate::config::CorsConfig;
use crate::error::GatewayError;

/// Pre-built CORS header values.
#[derive(Debug, Clone)]
pub(crate) struct Cors {
    allow_origin: HeaderValue,
    allow_methods: HeaderValue,
    allow_headers: HeaderValue,
    expose_headers: HeaderValue,
    max_age: HeaderValue,
}

impl Cors {
    /// Builds header values once; the config was validated, so invalid values cannot occur.
    pub(crate) fn new(config: &CorsConfig) -> Result<Self, http::header::InvalidHeaderValue> {
        Ok(Cors {
            allow_origin: HeaderValue::from_str(&config.allow_origin)?,
            allow_methods: HeaderValue::from_str(&config.allow_methods)?,
            allow_headers: HeaderValue::from_str(&config.allow_headers)?,
            expose_headers: HeaderValue::from_str(&config.expose_headers)?,
            max_age: HeaderValue::from(config.max_age),
        })
    }

    /// Decorates any response: CORS headers when the request had `Origin`, and `Vary: Origin`
    /// always, so a shared cache never hands a CORS-less copy to a browser.
    pub(crate) fn apply(&self, request_has_origin: bool, headers: &mut HeaderMap) {
        headers.append(VARY, HeaderValue::from_static("Origin"));
        if request_has_origin {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin.clone());
            headers.insert(ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone());
            headers.insert(ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
            headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, self.expose_headers.clone());
        }
    }

    /// Answers a preflight locally: allowed for GET and HEAD, refused for anything else.
    /// Returns the extra headers of the 204 answer.
    pub(crate) fn preflight(&self, request: &HeaderMap) -> Result<HeaderMap, GatewayError> {
        if !request.contains_key(ORIGIN) {
            return Err(GatewayError::PreflightRefused("no Origin header"));
        }
        let method = request
            .get(ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|v| Method::from_bytes(v.as_bytes()).ok());
        match method {
            Some(Method::GET | Method::HEAD) => {
                let mut headers = HeaderMap::with_capacity(6);
                headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, self.allow_headers.clone());
                Ok(headers)
            }
            Some(_) => Err(GatewayError::PreflightRefused("method not allowed")),
            None => Err(GatewayError::PreflightRefused(
                "missing Access-Control-Request-Method",
            )),
        }
    }
}

/// Whether the request carries an `Origin` header.
pub(crate) fn has_origin(headers: &HeaderMap) -> bool {
    headers.contains_key(ORIGIN)
}
