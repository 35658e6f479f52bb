//! The etcd backend's TLS and user/password options against a real etcd:
//! a server that demands client certificates, and one with auth enabled.
//! Certificates are made for the test with the `openssl` command.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use ipam::store::etcd::{EtcdConfig, EtcdStore};
use ipam::store::{Datastore, Kind, StoreError};
use ipam::testing::etcd_server::{EtcdOptions, ServerTls};
use ipam::testing::EtcdServer;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate.
fn make_certs(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=felix test CA",
    ]);
    openssl(dir, &ca);
    for (who, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
        let (key, csr, pem, ext) = (
            format!("{who}.key"),
            format!("{who}.csr"),
            format!("{who}.pem"),
            format!("{who}.ext"),
        );
        std::fs::write(
            dir.join(&ext),
            format!("subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"),
        )
        .unwrap();
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=127.0.0.1"]);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    make_certs(d);
    let server = EtcdServer::start_with(EtcdOptions {
        tls: Some(ServerTls {
            cert: d.join("server.pem"),
            key: d.join("server.key"),
            ca: d.join("ca.pem"),
            client_cert_auth: true,
        }),
        ..EtcdOptions::default()
    })
    .await
    .unwrap();

    let url = format!(
        "{}?ca={}&cert={}&key={}&timeout=2",
        server.url(),
        d.join("ca.pem").display(),
        d.join("client.pem").display(),
        d.join("client.key").display()
    );
    let store = EtcdStore::connect(EtcdConfig::from_url(&url).unwrap())
        .await
        .unwrap();
    let rev = store
        .create(Kind::IpPool, "p", b"{}".to_vec())
        .await
        .unwrap();
    assert_eq!(store.get(Kind::IpPool, "p").await.unwrap().revision, rev);

    // Through store::open as the CLI does.
    let opened = ipam::store::open(&url).await.unwrap();
    assert_eq!(opened.get(Kind::IpPool, "p").await.unwrap().revision, rev);

    // The CA alone is not enough: the server wants a client certificate.
    let ca_only = format!(
        "{}?ca={}&timeout=2",
        server.url(),
        d.join("ca.pem").display()
    );
    let refused = match EtcdStore::connect(EtcdConfig::from_url(&ca_only).unwrap()).await {
        Err(e) => e,
        Ok(s) => s.get(Kind::IpPool, "p").await.unwrap_err(),
    };
    assert!(matches!(refused, StoreError::Unavailable(_)), "{refused:?}");

    // Nor is plain HTTP.
    let plain = match EtcdStore::connect(server.config()).await {
        Err(e) => e,
        Ok(s) => s.get(Kind::IpPool, "p").await.unwrap_err(),
    };
    assert!(matches!(plain, StoreError::Unavailable(_)), "{plain:?}");

    // A CA file that does not exist is a clear configuration error.
    let missing = format!("{}?ca=/nonexistent/ca.pem", server.url());
    let err = EtcdStore::connect(EtcdConfig::from_url(&missing).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Invalid(m) if m.contains("/nonexistent/ca.pem")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_authentication() {
    let server = EtcdServer::start().await.unwrap();
    let admin = server.store().await.unwrap();
    let mut client = admin.client().clone();
    client.user_add("root", "root-pw", None).await.unwrap();
    client.user_grant_role("root", "root").await.unwrap();
    client.auth_enable().await.unwrap();

    let secrets = tempfile::tempdir().unwrap();
    let pw_file = secrets.path().join("pw");
    std::fs::write(&pw_file, "root-pw\n").unwrap();
    let url = format!(
        "{}?username=root&password-file={}&timeout=2",
        server.url(),
        pw_file.display()
    );
    let store = EtcdStore::connect(EtcdConfig::from_url(&url).unwrap())
        .await
        .unwrap();
    let rev = store
        .create(Kind::BgpPeer, "peer-1", b"{}".to_vec())
        .await
        .unwrap();
    assert_eq!(
        store.get(Kind::BgpPeer, "peer-1").await.unwrap().revision,
        rev
    );

    // A wrong password is refused at connect; no credentials at the first request.
    let wrong = format!("{}?username=root&password=nope&timeout=2", server.url());
    let err = EtcdStore::connect(EtcdConfig::from_url(&wrong).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Unavailable(m) if m.contains("authentication")),
        "{err:?}"
    );
    let anonymous = EtcdStore::connect(server.config()).await.unwrap();
    let err = anonymous.get(Kind::BgpPeer, "peer-1").await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
}
