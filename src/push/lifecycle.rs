//! `s3edge lifecycle rules`: the S3-native alternative to the lifecycle sweep. One bucket
//! lifecycle rule per environment of a region with `delete_after_days`, filtered by the object
//! tag `s3edge-env=<env>` every push sets (and the region's key prefix). Printed as the XML
//! `PutBucketLifecycleConfiguration` takes; `--apply` merges them with the bucket's rules that
//! s3edge does not own (IDs not starting `s3edge-env-`) and puts the result.
//!
//! S3 counts a rule's days from each object's creation, rounded up to the next midnight UTC,
//! so the bucket's rule is close to, not identical with, the sweep's calendar days in
//! `push.retention_timezone`.

use std::path::PathBuf;
use std::sync::Arc;

use aws_sdk_s3::types::{
    BucketLifecycleConfiguration, ExpirationStatus, LifecycleExpiration, LifecycleRule,
    LifecycleRuleAndOperator, LifecycleRuleFilter, Tag,
};

use super::bucket::{Bucket, ENV_TAG};
use super::model::Target;
use super::store::Store;
use super::upload::Uploader;
use crate::config::Config;

/// Rule IDs s3edge owns start with this.
pub const RULE_PREFIX: &str = "s3edge-env-";
/// Rules per bucket (AWS's limit; Scaleway's is the same).
pub const MAX_RULES: usize = 1000;

/// `s3edge lifecycle …`.
#[derive(Debug, clap::Subcommand)]
pub enum LifecycleCommand {
    /// Print (or --apply) the bucket lifecycle rules of a region's environments.
    Rules {
        /// The config: its region table and `push.spool` (the environments' database).
        #[arg(long, short)]
        config: PathBuf,
        /// Region.
        #[arg(long)]
        region: String,
        /// Put the rules into the bucket, merged with the rules s3edge does not own.
        #[arg(long)]
        apply: bool,
    },
}

/// One environment's rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Environment.
    pub env: String,
    /// Days after which objects expire.
    pub days: u32,
    /// The region's key prefix (may be empty).
    pub prefix: String,
}

impl Rule {
    fn id(&self) -> String {
        format!("{RULE_PREFIX}{}", self.env)
    }

    /// As the SDK's type.
    fn to_sdk(&self) -> Result<LifecycleRule, aws_sdk_s3::error::BuildError> {
        let tag = Tag::builder().key(ENV_TAG).value(&self.env).build()?;
        let filter = if self.prefix.is_empty() {
            LifecycleRuleFilter::builder().tag(tag).build()
        } else {
            LifecycleRuleFilter::builder()
                .and(
                    LifecycleRuleAndOperator::builder()
                        .prefix(&self.prefix)
                        .tags(tag)
                        .build(),
                )
                .build()
        };
        LifecycleRule::builder()
            .id(self.id())
            .filter(filter)
            .status(ExpirationStatus::Enabled)
            .expiration(
                LifecycleExpiration::builder()
                    .days(i32::try_from(self.days).unwrap_or(i32::MAX))
                    .build(),
            )
            .build()
    }
}

/// The rules as `PutBucketLifecycleConfiguration`'s XML body.
pub fn rules_xml(rules: &[Rule]) -> String {
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <LifecycleConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\n",
    );
    for rule in rules {
        let tag = format!(
            "<Tag><Key>{ENV_TAG}</Key><Value>{}</Value></Tag>",
            escape(&rule.env)
        );
        let filter = if rule.prefix.is_empty() {
            tag
        } else {
            format!("<And><Prefix>{}</Prefix>{tag}</And>", escape(&rule.prefix))
        };
        xml.push_str(&format!(
            "  <Rule>\n    <ID>{}</ID>\n    <Filter>{filter}</Filter>\n    <Status>Enabled</Status>\n    <Expiration><Days>{}</Days></Expiration>\n  </Rule>\n",
            escape(&rule.id()),
            rule.days
        ));
    }
    xml.push_str("</LifecycleConfiguration>\n");
    xml
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Runs `s3edge lifecycle …`: the XML to stdout; with `--apply`, a summary after it.
pub async fn run(command: LifecycleCommand) -> anyhow::Result<()> {
    let LifecycleCommand::Rules {
        config,
        region,
        apply,
    } = command;
    let config = Arc::new(Config::load(&config)?);
    let push = config.push.as_ref().ok_or_else(|| {
        anyhow::anyhow!("the config has no [push]: the environments live in its spool")
    })?;
    let region_config = config
        .regions
        .iter()
        .find(|r| r.name == region)
        .ok_or_else(|| anyhow::anyhow!("no region {region:?} in the config"))?;
    let postgres = match &push.database {
        crate::config::Database::Sqlite => {
            let database = push.spool.join("push.db");
            if !database.exists() {
                anyhow::bail!(
                    "no push database at {}: run the push service with this config first",
                    database.display()
                );
            }
            None
        }
        crate::config::Database::Postgres(url) => Some(url.as_str()),
    };
    let spool = super::spool::Spool::open(&push.spool).await?;
    let store = Store::open(&push.spool, postgres, &spool.node_id().await?).await?;
    let rules: Vec<Rule> = store
        .lifecycle_environments(Some(&region))
        .await?
        .into_iter()
        .map(|(env, days)| Rule {
            env,
            days,
            prefix: region_config.key_prefix.clone(),
        })
        .collect();
    if rules.len() > MAX_RULES {
        anyhow::bail!(
            "{} environments of {region} have a lifecycle: more than the {MAX_RULES} rules a bucket takes; use the sweep (push.sweep_every)",
            rules.len()
        );
    }
    println!("{}", rules_xml(&rules).trim_end());
    if !apply {
        return Ok(());
    }
    let uploader = Uploader::new(config.clone(), std::time::Duration::from_secs(30));
    let bucket = uploader
        .bucket(&Target::Complimentary {
            region: region.clone(),
        })
        .await?;
    let (kept, put) = apply_rules(&bucket, &rules).await?;
    eprintln!(
        "s3edge: {} put into {}: {put} s3edge rules, {kept} other rules kept",
        if put + kept == 0 { "no rules" } else { "rules" },
        bucket.bucket
    );
    Ok(())
}

/// Merges `rules` with the bucket's rules s3edge does not own and puts them (or deletes the
/// configuration when nothing is left). Returns (rules kept, s3edge rules put).
pub async fn apply_rules(bucket: &Bucket, rules: &[Rule]) -> anyhow::Result<(usize, usize)> {
    let current = bucket.lifecycle_rules().await?;
    let mut merged: Vec<LifecycleRule> = current
        .into_iter()
        .filter(|r| !r.id().is_some_and(|id| id.starts_with(RULE_PREFIX)))
        .collect();
    let kept = merged.len();
    for rule in rules {
        merged.push(rule.to_sdk()?);
    }
    if merged.len() > MAX_RULES {
        anyhow::bail!(
            "{kept} other rules and {} of s3edge make {}: more than the {MAX_RULES} a bucket takes; nothing was changed",
            rules.len(),
            merged.len()
        );
    }
    let configuration = if merged.is_empty() {
        None
    } else {
        Some(
            BucketLifecycleConfiguration::builder()
                .set_rules(Some(merged))
                .build()?,
        )
    };
    bucket.put_lifecycle(configuration).await?;
    Ok((kept, rules.len()))
}
