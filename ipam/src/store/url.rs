//! `--datastore URL`: which backend to open.
//!
//! - `sqlite:PATH` (also `sqlite://PATH`) — the embedded default;
//! - `etcd://HOST:PORT[,HOST:PORT…][?ca=…&cert=…&key=…&username=…&password-file=…]`
//!   — etcd v3 ([`EtcdConfig::from_url`] lists the options);
//! - `kubernetes` — CRDs through the API server of the current kubeconfig
//!   or in-cluster account.

use std::path::PathBuf;
use std::sync::Arc;

use super::etcd::{EtcdConfig, EtcdStore};
use super::kubernetes::KubeStore;
use super::sqlite::SqliteStore;
use super::{Datastore, StoreError};

/// The default datastore of the CLI and the node agent.
pub const DEFAULT_DATASTORE: &str = "sqlite:/var/lib/felix/ipam.db";

/// A parsed datastore URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatastoreUrl {
    Sqlite(PathBuf),
    Etcd(EtcdConfig),
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
        if url.starts_with("etcd://") {
            return Ok(DatastoreUrl::Etcd(EtcdConfig::from_url(url)?));
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
        DatastoreUrl::Etcd(config) => Ok(Arc::new(EtcdStore::connect(config).await?)),
        DatastoreUrl::Kubernetes => Ok(Arc::new(KubeStore::from_default_config().await?)),
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
            Some(DatastoreUrl::Etcd(EtcdConfig::new(vec![
                "127.0.0.1:2379".into(),
                "127.0.0.2:2379".into()
            ])))
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
