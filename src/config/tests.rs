//! The config reader against good and broken files: exact messages, keys and lines.

use super::*;

const GOOD: &str = r#"
[server]
http = ["127.0.0.1:8080"]

[regions.eu1]
hosts = ["EU1-addpipe.s3.eu-central-1.amazonaws.com"]
endpoint = "https://s3.eu-central-1.amazonaws.com"
bucket = "eu1-addpipe"
signing_region = "eu-central-1"
provider = "aws"
credentials = { access_key_id_env = "EU1_KEY", secret_access_key_env = "EU1_SECRET" }
"#;

fn env(name: &str) -> Option<String> {
    match name {
        "EU1_KEY" => Some("AKIA".into()),
        "EU1_SECRET" => Some("wJalrXUtnFEMI-value".into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse("test.toml", text, &env)
}

/// The one problem of a broken file.
fn only_problem(text: &str) -> ConfigError {
    let errors = parse(text).unwrap_err();
    assert_eq!(errors.0.len(), 1, "{errors}");
    errors.0[0].clone()
}

#[test]
fn good_config_parses() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.regions.len(), 1);
    let r = &c.regions[0];
    assert_eq!(r.hosts, ["eu1-addpipe.s3.eu-central-1.amazonaws.com"]);
    assert_eq!(r.addressing, Addressing::VirtualHosted);
    assert_eq!(r.credentials.access_key_id, "AKIA");
    assert_eq!(c.cors.max_age, 3000);
    assert!(!format!("{:?}", r.credentials).contains("wJalrXUtnFEMI"));
}

#[test]
fn errors_name_the_key() {
    let cases = [
        (
            GOOD.replace("provider = \"aws\"", "provider = \"aws\"\ncolour = 1"),
            "regions.eu1.colour",
        ),
        (
            GOOD.replace("https://s3", "ftp://s3"),
            "regions.eu1.endpoint",
        ),
        (
            GOOD.replace("eu1-addpipe\"", "EU1_addpipe\""),
            "regions.eu1.bucket",
        ),
        (
            GOOD.replace("EU1_SECRET", "MISSING"),
            "regions.eu1.credentials.secret_access_key_env",
        ),
        (GOOD.replace("127.0.0.1:8080", "localhost"), "server.http"),
        (
            GOOD.replace("[server]", "[server]\nshutdown_grace = \"soon\""),
            "server.shutdown_grace",
        ),
    ];
    let second_region = GOOD.replace("[regions.eu1]", "[regions.eu2]");
    let duplicate_host = format!(
        "{GOOD}\n{}",
        &second_region[second_region.find("[regions.eu2]").unwrap_or(0)..]
    );
    let cases = cases.into_iter().chain([
        (
            GOOD.replace("[server]", "[server]\nhttps = [\"127.0.0.1:8443\"]"),
            "tls",
        ),
        (duplicate_host, "regions.eu2.hosts"),
        (
            GOOD.replace("[regions.eu1]", "[regions.EU_1]"),
            "regions.EU_1",
        ),
        (
            GOOD.replace("provider = \"aws\"", "provider = \"gcs\""),
            "regions.eu1.provider",
        ),
        (
            GOOD.replace("eu-central-1\"\nprovider", "eu central\"\nprovider"),
            "regions.eu1.signing_region",
        ),
        (
            GOOD.replace(
                "https://s3.eu-central-1.amazonaws.com",
                "https://s3.eu-central-1.amazonaws.com/bucket",
            ),
            "regions.eu1.endpoint",
        ),
    ]);
    for (text, key) in cases {
        let err = only_problem(&text);
        assert_eq!(err.key, key, "{err}");
        assert_eq!(err.file, "test.toml");
    }
}

/// Broken files and the exact message each must produce (file, line, key, reason).
#[test]
fn broken_files_get_exact_messages() {
    let cases: Vec<(String, &str)> = vec![
        (
            GOOD.replace(
                "[server]",
                "[timeouts]\n# a comment above the key\nrespone_head = \"3s\"\n\n[server]",
            ),
            "test.toml:4: timeouts.respone_head: unknown key (known: connect, response_head, body_idle, pool_idle)",
        ),
        (
            GOOD.replace("[server]", "[timeouts]\nconnect = \"3\"\n\n[server]"),
            "test.toml:3: timeouts.connect: \"3\" is not a duration; write e.g. \"3s\" or \"500ms\"",
        ),
        (
            GOOD.replace("[server]", "[cache]\ncapacity = \"512 MB!\"\n\n[server]"),
            "test.toml:3: cache.capacity: \"512 MB!\" is not a size; write e.g. \"512 MiB\"",
        ),
        (
            GOOD.replace("bucket = \"eu1-addpipe\"\n", ""),
            "test.toml:5: regions.eu1.bucket: missing: this key is required",
        ),
        (
            GOOD.replace("provider = \"aws\"", "provider = \"aws\"\ncolour = 1"),
            "test.toml:11: regions.eu1.colour: unknown key (known: hosts, endpoint, bucket, signing_region, addressing, key_prefix, provider, connect_to, credentials, push_credentials, timeouts)",
        ),
        (
            GOOD.replace("EU1_SECRET", "EMPTY"),
            "test.toml:11: regions.eu1.credentials.secret_access_key_env: environment variable EMPTY is empty",
        ),
        (
            GOOD.replace("provider = \"aws\"", "provider = \"gcs\""),
            "test.toml:10: regions.eu1.provider: \"gcs\" is not one of \"aws\", \"scaleway\"",
        ),
        (
            GOOD.replace("[server]", "[server\n"),
            "test.toml:2: invalid TOML: invalid table header\nexpected `.`, `]`",
        ),
    ];
    for (text, expected) in cases {
        let err = only_problem(&text);
        assert_eq!(err.to_string(), expected);
    }
}

#[test]
fn every_problem_of_a_file_is_reported_in_one_run() {
    let text = GOOD
        .replace("EU1_KEY", "MISSING_A")
        .replace("EU1_SECRET", "MISSING_B")
        .replace("[server]", "[server]\nspeed = 1")
        .replace("provider = \"aws\"", "provider = \"aws\"\ncolour = 1");
    let errors = parse(&text).unwrap_err();
    let keys: Vec<&str> = errors.0.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "server.speed",
            "regions.eu1.colour",
            "regions.eu1.credentials.access_key_id_env",
            "regions.eu1.credentials.secret_access_key_env",
        ],
        "{errors}"
    );
}

#[test]
fn a_missing_key_points_at_its_table_in_a_minimal_file() {
    let text = "[server]\nhttp = [\"127.0.0.1:8080\"]\n\n[regions.eu1]\nhosts = [\"a.example\"]\nendpoint = \"https://s3.example\"\nsigning_region = \"eu-central-1\"\nprovider = \"aws\"\ncredentials = { access_key_id = \"k\", secret_access_key = \"s\" }\n";
    let err = only_problem(text);
    assert_eq!(
        err.to_string(),
        "test.toml:4: regions.eu1.bucket: missing: this key is required"
    );
}

#[test]
fn an_unreadable_file_says_why_once() {
    let errors = Config::load(std::path::Path::new("/nonexistent/s3edge.toml")).unwrap_err();
    assert_eq!(
        errors.to_string(),
        "cannot read /nonexistent/s3edge.toml: No such file or directory"
    );
}

#[test]
fn the_shipped_example_reports_every_missing_variable_at_once() {
    let text = include_str!("../../config/s3edge.toml");
    let errors = Config::parse("config/s3edge.toml", text, &|_| None).unwrap_err();
    assert_eq!(errors.0.len(), 8, "{errors}");
    assert!(
        errors.0.iter().all(|e| e.reason.ends_with("is not set")),
        "{errors}"
    );
}

#[test]
fn push_database_is_sqlite_or_a_postgres_url_never_logged() {
    let with = |line: &str| {
        format!("{GOOD}\n[push]\nlisten = \"127.0.0.1:9093\"\nspool = \"/tmp/s\"\n{line}\n")
    };
    let db = |text: &str| parse(text).unwrap().push.unwrap().database;
    assert_eq!(db(&with("")), Database::Sqlite);
    assert_eq!(db(&with("database = \"sqlite\"")), Database::Sqlite);
    let url = "postgres://s3edge:pw-secret@127.0.0.1/s3edge";
    let got = db(&with(&format!("database = {url:?}")));
    assert_eq!(got, Database::Postgres(url.into()));
    assert!(!format!("{got:?}").contains("pw-secret"));
    let problem = only_problem(&with("database = \"mysql://x/y\""));
    assert!(problem.to_string().contains("push.database"), "{problem}");
    assert!(problem.to_string().contains("postgres://"), "{problem}");
}
