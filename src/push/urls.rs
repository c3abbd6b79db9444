//! A recording's URLs: origin (`https://{LOCATION}/{ACCOUNT}/{NAME}{suffix}`, the region's
//! public host) and edge (`{edge_url}/{region}/{ACCOUNT}/{NAME}{suffix}`), keyed by suffix.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Config;
use crate::route::FileKind;

/// The production regions and their public LOCATION hosts (used without a config).
pub const PRODUCTION_LOCATIONS: [(&str, &str); 4] = [
    ("eu1", "eu1-addpipe.s3.eu-central-1.amazonaws.com"),
    ("eu2", "eu2-addpipe.s3.nl-ams.scw.cloud"),
    ("us1", "us1-addpipe.s3-us-west-1.amazonaws.com"),
    ("us2", "us2-addpipe.s3.us-east-1.amazonaws.com"),
];

/// Origin and edge URLs, keyed by suffix (`.mp4`, `.jpg`, `_filmstrip.jpg`, `_raw.mp4`).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Urls {
    /// The bucket's public URLs.
    pub origin: BTreeMap<String, String>,
    /// Through the edge gateway, when `push.edge_url` is set.
    pub edge: BTreeMap<String, String>,
}

/// The LOCATION host of a region: its first public host in the config, or the production
/// table without one.
pub fn location(config: Option<&Config>, region: &str) -> Option<String> {
    match config {
        Some(config) => config
            .regions
            .iter()
            .find(|r| r.name == region)
            .and_then(|r| r.hosts.first().cloned()),
        None => PRODUCTION_LOCATIONS
            .iter()
            .find(|(name, _)| *name == region)
            .map(|(_, host)| (*host).to_string()),
    }
}

/// The URLs of a recording in a region.
pub fn urls(
    location: Option<&str>,
    edge_url: Option<&str>,
    region: &str,
    account: &str,
    name: &str,
) -> Urls {
    let mut urls = Urls::default();
    for kind in FileKind::ALL {
        let suffix = kind.suffix();
        if let Some(host) = location {
            urls.origin.insert(
                suffix.to_string(),
                format!("https://{host}/{account}/{name}{suffix}"),
            );
        }
        if let Some(edge) = edge_url {
            urls.edge.insert(
                suffix.to_string(),
                format!("{edge}/{region}/{account}/{name}{suffix}"),
            );
        }
    }
    urls
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_follow_the_scheme() {
        let host = location(None, "eu2");
        let u = urls(
            host.as_deref(),
            Some("https://edge.example.com"),
            "eu2",
            "H1",
            "rec",
        );
        assert_eq!(
            u.origin[".mp4"],
            "https://eu2-addpipe.s3.nl-ams.scw.cloud/H1/rec.mp4"
        );
        assert_eq!(
            u.edge["_raw.mp4"],
            "https://edge.example.com/eu2/H1/rec_raw.mp4"
        );
        assert_eq!(u.origin.len(), 4);
        assert!(location(None, "xx1").is_none());
    }
}
