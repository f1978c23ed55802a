//! Opens an issue through a GitHub-style JSON API with a bearer token.
//!
//! Bind the token to the API (`host secret set GITHUB_TOKEN --destination
//! https://api.github.com`) and this plugin never holds it: it gets a
//! placeholder, writes `Authorization: Bearer <placeholder>`, and the host
//! puts the token in as the request leaves, toward the API only.

use keyhole_guest::{TaskError, http, secrets, task};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Deserialize)]
struct Input {
    /// API base, e.g. `https://api.github.com`.
    #[serde(default = "github")]
    api: String,
    /// `owner/name`.
    repo: String,
    title: String,
    #[serde(default)]
    body: String,
}

fn github() -> String {
    "https://api.github.com".into()
}

#[derive(Serialize)]
struct Opened {
    number: u64,
    url: String,
}

#[derive(Deserialize)]
struct Created {
    number: u64,
    html_url: String,
}

fn open_issue(input: Input) -> Result<Opened, TaskError> {
    let token = secrets::get("GITHUB_TOKEN")?;
    let response = http::post(&format!("{}/repos/{}/issues", input.api.trim_end_matches('/'), input.repo))
        .header("authorization", &format!("Bearer {token}"))
        .header("accept", "application/vnd.github+json")
        .header("user-agent", "keyhole-open-issue")
        .json(&json!({ "title": input.title, "body": input.body }))?
        .send()?;
    if response.status != 201 {
        return Err(TaskError::new(format!("the API answered {}: {}", response.status, response.text())));
    }
    let created: Created = response.json()?;
    Ok(Opened { number: created.number, url: created.html_url })
}

task!(open_issue);
