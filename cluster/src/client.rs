//! `tenantflow job ...` and `tenantflow cluster status|stop`: the API's client. Tables for
//! people by default, `--output json` for scripts.

use std::path::Path;

use anyhow::{bail, Context};
use serde_json::Value;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

pub struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(api: &str) -> Client {
        let base = if api.starts_with("http://") || api.starts_with("https://") { api.to_string() } else { format!("http://{api}") };
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            // API errors are JSON bodies worth showing, not transport failures.
            .http_status_as_error(false)
            .build();
        Client { base: base.trim_end_matches('/').to_string(), agent: config.into() }
    }

    /// Calls the API; `query` pairs are percent-encoded by ureq.
    /// `body` is (content type, text).
    pub(crate) fn call(&self, method: &str, path: &str, query: &[(&str, String)], body: Option<(&str, String)>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let pairs = query.iter().map(|(k, v)| (*k, v.as_str()));
        let response = match (method, body) {
            ("GET", _) => self.agent.get(&url).query_pairs(pairs).call(),
            ("DELETE", _) => self.agent.delete(&url).query_pairs(pairs).call(),
            (_, Some((kind, b))) => self.agent.post(&url).query_pairs(pairs).content_type(kind).send(b),
            (_, None) => self.agent.post(&url).query_pairs(pairs).send_empty(),
        };
        let mut response =
            response.with_context(|| format!("cannot reach the tenantflow API at {} (is the cluster running? see --api)", self.base))?;
        let status = response.status();
        let text = response.body_mut().read_to_string().context("reading the API's answer")?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let message = value["error"]["message"].as_str().map(String::from).unwrap_or_else(|| value.to_string());
            bail!("{} ({})", message, status.as_u16());
        }
        Ok(value)
    }

    pub fn submit(&self, file: &Path, restore: bool, output: Output) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        let name = file.display().to_string();
        let job =
            self.call("POST", "/api/v1/jobs", &[("file", name), ("restore", restore.to_string())], Some(("application/toml", text)))?;
        match output {
            Output::Json => println!("{job}"),
            Output::Table => println!("submitted {} ({})", job["id"].as_str().unwrap_or("?"), job["state"].as_str().unwrap_or("?")),
        }
        Ok(())
    }

    pub fn list(&self, output: Output) -> anyhow::Result<()> {
        let jobs = self.call("GET", "/api/v1/jobs", &[], None)?;
        match output {
            Output::Json => println!("{jobs}"),
            Output::Table => {
                println!("{:<28} {:<20} {:<12} {:>12} {:>12} {:>10}", "ID", "NAME", "STATE", "EVENTS_IN", "ROWS_OUT", "EVENTS/S");
                for j in jobs.as_array().into_iter().flatten() {
                    println!(
                        "{:<28} {:<20} {:<12} {:>12} {:>12} {:>10}",
                        j["id"].as_str().unwrap_or("?"),
                        j["name"].as_str().unwrap_or("?"),
                        j["state"].as_str().unwrap_or("?"),
                        j["events_in"].as_u64().map_or("-".into(), |n| n.to_string()),
                        j["rows_out"].as_u64().map_or("-".into(), |n| n.to_string()),
                        j["events_per_sec"].as_f64().map_or("-".into(), |n| format!("{n:.0}")),
                    );
                }
            }
        }
        Ok(())
    }

    pub fn describe(&self, id: &str, output: Output) -> anyhow::Result<()> {
        let job = self.call("GET", &job_path(id)?, &[], None)?;
        match output {
            Output::Json => println!("{job}"),
            Output::Table => print_fields(&job),
        }
        Ok(())
    }

    pub fn cancel(&self, id: &str, savepoint: bool, output: Output) -> anyhow::Result<()> {
        let job = self.call("DELETE", &job_path(id)?, &[("savepoint", savepoint.to_string())], None)?;
        match output {
            Output::Json => println!("{job}"),
            Output::Table => println!("cancelling {}{}", id, if savepoint { " with a savepoint" } else { "" }),
        }
        Ok(())
    }

    pub fn cluster_status(&self, output: Output) -> anyhow::Result<()> {
        let status = self.call("GET", "/api/v1/cluster", &[], None)?;
        match output {
            Output::Json => println!("{status}"),
            Output::Table => print_fields(&status),
        }
        Ok(())
    }

    pub fn cluster_stop(&self, output: Output) -> anyhow::Result<()> {
        let answer = self.call("POST", "/api/v1/cluster/stop", &[], None)?;
        match output {
            Output::Json => println!("{answer}"),
            Output::Table => println!("stopping the cluster"),
        }
        Ok(())
    }
}

impl Client {
    /// `tenantflow silence add`: mutes alerts matching every matcher until it ends.
    pub fn silence_add(&self, matchers: &[String], duration: &str, author: &str, comment: &str, output: Output) -> anyhow::Result<()> {
        let body = serde_json::json!({"matchers": matchers, "duration": duration, "created_by": author, "comment": comment});
        let silence = self.call("POST", "/api/v1/silences", &[], Some(("application/json", body.to_string())))?;
        match output {
            Output::Json => println!("{silence}"),
            Output::Table => {
                println!("silence {} until {}", silence["id"].as_str().unwrap_or("?"), silence["ends_at"].as_str().unwrap_or("?"))
            }
        }
        Ok(())
    }

    pub fn silence_list(&self, output: Output) -> anyhow::Result<()> {
        let list = self.call("GET", "/api/v1/silences", &[], None)?;
        match output {
            Output::Json => println!("{list}"),
            Output::Table => {
                println!("{:<18} {:<9} {:<25} {:<40} COMMENT", "ID", "STATE", "ENDS", "MATCHERS");
                for s in list.as_array().into_iter().flatten() {
                    let matchers: Vec<&str> = s["matchers"].as_array().into_iter().flatten().filter_map(|m| m.as_str()).collect();
                    println!(
                        "{:<18} {:<9} {:<25} {:<40} {}",
                        s["id"].as_str().unwrap_or("?"),
                        s["state"].as_str().unwrap_or("?"),
                        s["ends_at"].as_str().unwrap_or("?"),
                        matchers.join(","),
                        s["comment"].as_str().unwrap_or(""),
                    );
                }
            }
        }
        Ok(())
    }

    pub fn silence_expire(&self, id: &str, output: Output) -> anyhow::Result<()> {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)) {
            bail!("`{id}` is not a silence id (see `tenantflow silence list`)");
        }
        let silence = self.call("DELETE", &format!("/api/v1/silences/{id}"), &[], None)?;
        match output {
            Output::Json => println!("{silence}"),
            Output::Table => println!("silence {id} expired"),
        }
        Ok(())
    }
}

fn print_fields(v: &Value) {
    if let Some(map) = v.as_object() {
        for (k, v) in map {
            let shown = match v {
                Value::String(s) => s.clone(),
                Value::Null => "-".into(),
                other => other.to_string(),
            };
            println!("{k:<24} {shown}");
        }
    }
}

/// A job's API path. Job ids are `<name>-<n>` made of letters, digits, `-`, `_` and `.`, so
/// anything else cannot name a job.
fn job_path(id: &str) -> anyhow::Result<String> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        bail!("`{id}` is not a job id (see `tenantflow job list`)");
    }
    Ok(format!("/api/v1/jobs/{id}"))
}
