//! Talking to a running Pacer over HTTP, as `pacer tail`, `produce` and `sql` do: where it
//! is and who to be there (a user and password, or a token from `pacer token create`).

use anyhow::Context;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};

#[derive(clap::Args, Clone, Debug)]
pub struct Remote {
    /// Pacer's HTTP address
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "PACER_SERVER")]
    pub server: String,
    /// User to act as (HTTP Basic), with --password
    #[arg(long, env = "PACER_USER")]
    pub user: Option<String>,
    #[arg(long, env = "PACER_PASSWORD", hide_env_values = true, requires = "user")]
    pub password: Option<String>,
    /// A token from `pacer token create`, instead of a user and password
    #[arg(long, env = "PACER_TOKEN", hide_env_values = true, conflicts_with = "user")]
    pub token: Option<String>,
    /// PEM file of a CA to trust for an https:// server, besides the system's
    #[arg(long, env = "PACER_CACERT")]
    pub cacert: Option<std::path::PathBuf>,
}

impl Remote {
    /// The URL of `path` on the server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.trim_end_matches('/'))
    }

    /// A client that sends the credentials with every request.
    pub fn client(&self) -> anyhow::Result<reqwest::Client> {
        let mut headers = HeaderMap::new();
        let authorization = match (&self.token, &self.user) {
            (Some(token), _) => Some(format!("Bearer {token}")),
            (None, Some(user)) => {
                use base64::Engine as _;
                let pair = format!("{user}:{}", self.password.as_deref().unwrap_or_default());
                Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair)))
            }
            (None, None) => None,
        };
        if let Some(value) = authorization {
            let mut value = HeaderValue::from_str(&value).context("the credentials are not valid in a header")?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let mut builder = reqwest::Client::builder().default_headers(headers);
        if let Some(file) = &self.cacert {
            let pem = std::fs::read(file).with_context(|| format!("--cacert {}", file.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("--cacert {}: not PEM certificates", file.display()))?;
            builder = builder.tls_certs_merge(certs);
        }
        builder.build().context("building the HTTP client")
    }

    /// The error for a request that did not reach the server.
    pub fn unreachable(&self) -> String {
        format!("cannot reach Pacer at {} (is `pacer up` running?)", self.server)
    }
}

/// Why the server said no, in words: its JSON `error`, else the status and body.
pub async fn refusal(response: reqwest::Response) -> String {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let said = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or(body);
    let hint = match status.as_u16() {
        401 => " (give --user and --password, or --token; or PACER_USER/PACER_PASSWORD, PACER_TOKEN)",
        _ => "",
    };
    format!("{status}: {said}{hint}")
}
