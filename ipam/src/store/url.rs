//! `--datastore URL`: which backend to open.
//!
//! - `sqlite:PATH` (also `sqlite://PATH`) — the embedded default;
//! - `etcd://HOST:PORT[,HOST:PORT…]` — etcd v3;
//! - `kubernetes` — CRDs through the API server of the current kubeconfig
//!   or in-cluster account.

use std::path::PathBuf;
use std::sync::Arc;

use super::sqlite::SqliteStore;
use super::{Datastore, StoreError};

/// The default datastore of the CLI and the node agent.
pub const DEFAULT_DATASTORE: &str = "sqlite:/var/lib/felix/ipam.db";

/// A parsed datastore URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatastoreUrl {
    Sqlite(PathBuf),
    Etcd(Vec<String>),
    Kubernetes,
}

impl std::str::FromStr for DatastoreUrl {
    type Err = StoreError;

    fn from_str(url: &str) -> Result<Self, StoreError> {
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(StoreError::Invalid(format!(
                    "datastore {url:?}: sqlite needs a file path (sqlite:/var/lib/felix/ipam.db)"
                )));
            }
            return Ok(DatastoreUrl::Sqlite(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("etcd://") {
            let endpoints: Vec<String> = rest
                .trim_end_matches('/')
                .split(',')
                .filter(|e| !e.is_empty())
                .map(str::to_owned)
                .collect();
            if endpoints.is_empty() {
                return Err(StoreError::Invalid(format!(
                    "datastore {url:?}: etcd needs at least one HOST:PORT"
                )));
            }
            return Ok(DatastoreUrl::Etcd(endpoints));
        }
        if url == "kubernetes" || url == "kubernetes:" {
            return Ok(DatastoreUrl::Kubernetes);
        }
        Err(StoreError::Invalid(format!(
            "datastore {url:?}: expected sqlite:PATH, etcd://HOST:PORT[,HOST:PORT...] or kubernetes"
        )))
    }
}

/// Opens the datastore named by `url`.
pub async fn open(url: &str) -> Result<Arc<dyn Datastore>, StoreError> {
    match url.parse::<DatastoreUrl>()? {
        DatastoreUrl::Sqlite(path) => Ok(Arc::new(SqliteStore::open(path).await?)),
        DatastoreUrl::Etcd(_) => Err(StoreError::Invalid(
            "the etcd backend is not built yet (issue 4)".into(),
        )),
        DatastoreUrl::Kubernetes => Err(StoreError::Invalid(
            "the kubernetes backend is not built yet (issue 4)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            "sqlite:/tmp/x.db".parse::<DatastoreUrl>().ok(),
            Some(DatastoreUrl::Sqlite("/tmp/x.db".into()))
        );
        assert_eq!(
            "sqlite:///tmp/x.db".parse::<DatastoreUrl>().ok(),
            Some(DatastoreUrl::Sqlite("/tmp/x.db".into()))
        );
        assert_eq!(
            "etcd://127.0.0.1:2379,127.0.0.2:2379"
                .parse::<DatastoreUrl>()
                .ok(),
            Some(DatastoreUrl::Etcd(vec![
                "127.0.0.1:2379".into(),
                "127.0.0.2:2379".into()
            ]))
        );
        assert_eq!(
            "kubernetes".parse::<DatastoreUrl>().ok(),
            Some(DatastoreUrl::Kubernetes)
        );
        assert!("sqlite:".parse::<DatastoreUrl>().is_err());
        assert!("etcd://".parse::<DatastoreUrl>().is_err());
        assert!("mysql://x".parse::<DatastoreUrl>().is_err());
    }
}
