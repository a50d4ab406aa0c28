//! `pacer token create|list|revoke`: bearer tokens for scripts, Prometheus and Grafana,
//! kept (hashed) in the token file a running Pacer rereads when it changes.

use std::path::PathBuf;

use crate::config::Config;

#[derive(clap::Subcommand)]
pub enum Action {
    /// Makes a token that acts as a user, and prints it (only this once)
    Create {
        /// A name to list and revoke it by
        name: String,
        /// The user it acts as: their role and ACL apply
        #[arg(long)]
        user: String,
        /// How long it lasts, e.g. 30d or 12h [default: until revoked]
        #[arg(long)]
        expires: Option<String>,
        #[command(flatten)]
        place: Place,
    },
    /// Lists the tokens: name, user, created, expires
    List {
        #[command(flatten)]
        place: Place,
    },
    /// Revokes a token: it stops working at the next request
    Revoke {
        name: String,
        #[command(flatten)]
        place: Place,
    },
}

/// Where the token file is: `[auth] token_file`, else `tokens` in the data directory.
#[derive(clap::Args)]
pub struct Place {
    /// The configuration file Pacer runs with
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The data directory Pacer runs with [default: as the config says, or pacer-data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl Place {
    fn token_file(&self) -> anyhow::Result<PathBuf> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(dir) = &self.data_dir {
            config.log.dir = dir.clone();
        }
        Ok(config.token_file())
    }
}

pub fn run(action: Action) -> anyhow::Result<()> {
    let time = |ms: Option<i64>| ms.map_or("never".to_string(), pacer_core::format_time);
    match action {
        Action::Create { name, user, expires, place } => {
            let file = place.token_file()?;
            let expires = match expires {
                Some(text) => {
                    let ms = pacer_sql::engine::functions::duration_ms(&text)
                        .map_err(|e| anyhow::anyhow!("--expires {text}: {e}"))?;
                    anyhow::ensure!(ms > 0, "--expires {text}: give a time above zero");
                    Some(pacer_core::now_ms() + ms)
                }
                None => None,
            };
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let token = pacer_auth::token::create(&file, &name, &user, expires)?;
            eprintln!("token {name:?} acts as {user} until {}; kept (hashed) in {}", time(expires), file.display());
            println!("{token}");
        }
        Action::List { place } => {
            for t in pacer_auth::token::list(&place.token_file()?)? {
                println!("{}\t{}\tcreated {}\texpires {}", t.name, t.user, time(Some(t.created)), time(t.expires));
            }
        }
        Action::Revoke { name, place } => {
            let file = place.token_file()?;
            anyhow::ensure!(pacer_auth::token::revoke(&file, &name)?, "no token named {name:?} in {}", file.display());
            eprintln!("token {name:?} revoked");
        }
    }
    Ok(())
}
