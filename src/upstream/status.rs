//! Backend answers the client never sees as they are: an unexpected status becomes a
//! [`GatewayError`], with the S3 error code read from the XML body for the log.

use http::Response;

use crate::error::GatewayError;

/// Turns an unexpected backend answer into an error, reading at most a little of the XML
/// body for the S3 error code (for the log; the client never sees it).
pub async fn upstream_status_error<B>(response: Response<B>) -> GatewayError
where
    B: http_body::Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;
    let status = response.status();
    let limited = http_body_util::Limited::new(response.into_body(), 16 * 1024);
    let code =
        match tokio::time::timeout(std::time::Duration::from_secs(1), limited.collect()).await {
            Ok(Ok(collected)) => s3_error_code(&collected.to_bytes()),
            _ => None,
        };
    GatewayError::UpstreamStatus {
        status,
        code: code.unwrap_or_else(|| "-".into()),
    }
}

/// The `<Code>` of an S3 XML error document.
pub(crate) fn s3_error_code(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let end = start + text[start..].find("</Code>")?;
    Some(text[start..end].chars().take(64).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_s3_error_codes() {
        let xml = b"<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><RequestId>1</RequestId></Error>";
        assert_eq!(s3_error_code(xml).as_deref(), Some("AccessDenied"));
        assert_eq!(s3_error_code(b"nope"), None);
    }
}
