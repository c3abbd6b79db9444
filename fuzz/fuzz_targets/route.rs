//! The route parser over arbitrary Host and path bytes: never a panic, and any object it
//! yields has a key of the form `{hash}/{name}{suffix}`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use s3edge::route::Router;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (host, path) = data.split_at(split);
    let host = String::from_utf8_lossy(host);
    let path = String::from_utf8_lossy(path);
    let hosts = [vec!["eu1-addpipe.s3.eu-central-1.amazonaws.com".to_string()]];
    let router = Router::new([("eu1", hosts[0].as_slice())]);
    if let Ok(object) = router.resolve(Some(&host), &path) {
        let (hash, file) = object.key.split_once('/').expect("a slash");
        let name = file.strip_suffix(object.kind.suffix()).expect("the kind's suffix");
        let segment = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        assert!(segment(hash) && segment(name), "{:?}", object.key);
    }
});
