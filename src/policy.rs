//! The storage policy of writes: which storage class and encryption each file kind gets,
//! per provider.

use http::{HeaderMap, HeaderValue};

use crate::config::Provider;
use crate::route::FileKind;

/// The storage class a file kind is written with at a provider.
pub const fn storage_class(provider: Provider, kind: FileKind) -> &'static str {
    match (provider, kind) {
        // Scaleway offers STANDARD for these; its other classes are archival.
        (Provider::Scaleway, _) => "STANDARD",
        (Provider::Aws, FileKind::Processed) => "INTELLIGENT_TIERING",
        (Provider::Aws, FileKind::Snapshot | FileKind::Filmstrip) => "STANDARD",
        (Provider::Aws, FileKind::Raw) => "STANDARD_IA",
    }
}

/// Server-side encryption at rest: SSE-S3 on AWS, none on Scaleway.
pub const fn server_side_encryption(provider: Provider) -> Option<&'static str> {
    match provider {
        Provider::Aws => Some("AES256"),
        Provider::Scaleway => None,
    }
}

/// The headers of a PUT that follows the policy.
pub fn write_headers(provider: Provider, kind: FileKind) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(3);
    headers.insert(
        "x-amz-storage-class",
        HeaderValue::from_static(storage_class(provider, kind)),
    );
    if let Some(sse) = server_side_encryption(provider) {
        headers.insert(
            "x-amz-server-side-encryption",
            HeaderValue::from_static(sse),
        );
    }
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(kind.content_type()),
    );
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_table() {
        use FileKind::*;
        use Provider::*;
        let expected = [
            (Aws, Processed, "INTELLIGENT_TIERING"),
            (Aws, Snapshot, "STANDARD"),
            (Aws, Filmstrip, "STANDARD"),
            (Aws, Raw, "STANDARD_IA"),
            (Scaleway, Processed, "STANDARD"),
            (Scaleway, Raw, "STANDARD"),
        ];
        for (provider, kind, class) in expected {
            assert_eq!(storage_class(provider, kind), class);
        }
        assert_eq!(server_side_encryption(Aws), Some("AES256"));
        assert_eq!(server_side_encryption(Scaleway), None);
    }
}
