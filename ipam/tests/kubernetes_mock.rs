//! The kubernetes backend's own behaviour on the wire, beyond the
//! conformance suite: the CRD shape it writes, watch resumption when the
//! server ends a watch, both forms of 410 Gone, and API failures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures_util::StreamExt;
use ipam::store::{Datastore, Kind, StoreError, WatchEvent};
use ipam::testing::KubeUnderTest;
use serde_json::json;

async fn next(w: &mut ipam::store::WatchStream) -> Result<WatchEvent, StoreError> {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("an event in time")
        .expect("the stream goes on")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_are_cluster_scoped_custom_resources_with_the_value_as_spec() {
    let t = KubeUnderTest::start().await;
    let spec =
        json!({ "cidr": "10.244.0.0/26", "affinity": "host:node-1", "allocations": [0, null] });
    let rev = t
        .store
        .create(
            Kind::IpamBlock,
            "10-244-0-0-26",
            spec.to_string().into_bytes(),
        )
        .await
        .unwrap();
    let stored = t.server.object("ipamblocks", "10-244-0-0-26").unwrap();
    assert_eq!(stored["apiVersion"], "crd.felix-rs.io/v1");
    assert_eq!(stored["kind"], "IPAMBlock");
    assert_eq!(stored["spec"], spec);
    assert_eq!(stored["metadata"]["resourceVersion"], json!(rev.0));
    assert!(stored["metadata"].get("namespace").is_none());

    let o = t.store.get(Kind::IpamBlock, "10-244-0-0-26").await.unwrap();
    t.store
        .update(
            Kind::IpamBlock,
            "10-244-0-0-26",
            b"{}".to_vec(),
            &o.revision,
        )
        .await
        .unwrap();
    let o = t.store.get(Kind::IpamBlock, "10-244-0-0-26").await.unwrap();
    t.store
        .delete(Kind::IpamBlock, "10-244-0-0-26", &o.revision)
        .await
        .unwrap();
    let requests = t.server.requests();
    let base = "/apis/crd.felix-rs.io/v1/ipamblocks";
    for want in [
        format!("POST {base}?"),
        format!("GET {base}/10-244-0-0-26"),
        format!("PUT {base}/10-244-0-0-26?"),
        format!("DELETE {base}/10-244-0-0-26?"),
    ] {
        assert!(
            requests.iter().any(|r| r.starts_with(&want)),
            "no {want} in {requests:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_object_values_are_refused_before_any_request() {
    let t = KubeUnderTest::start().await;
    for bad in [&b"[1]"[..], b"not json", b"7"] {
        let err = t
            .store
            .create(Kind::IpPool, "p", bad.to_vec())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    }
    assert!(t.server.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_when_the_server_ends_it() {
    let t = KubeUnderTest::start().await;
    // Every watch response ends after two events, as a server's
    // timeoutSeconds would end it mid-stream.
    t.server.close_watches_after(Some(2));
    let listing = t.store.list(Kind::IpamHandle, "").await.unwrap();
    let mut w = t
        .store
        .watch(Kind::IpamHandle, Some(&listing.revision))
        .await
        .unwrap();
    let mut revs = Vec::new();
    for i in 0..7u64 {
        let name = format!("h-{i}");
        revs.push(
            t.store
                .create(
                    Kind::IpamHandle,
                    &name,
                    json!({ "i": i }).to_string().into_bytes(),
                )
                .await
                .unwrap(),
        );
    }
    for (i, rev) in revs.iter().enumerate() {
        match next(&mut w).await.unwrap() {
            WatchEvent::Put(o) => assert_eq!((o.name, &o.revision), (format!("h-{i}"), rev)),
            other => panic!("{other:?}"),
        }
    }
    let watches: Vec<_> = t
        .server
        .requests()
        .into_iter()
        .filter(|r| r.contains("watch=true"))
        .collect();
    assert!(
        watches.len() >= 4,
        "expected the watch to be reopened: {watches:#?}"
    );
    // Each reopening starts where the previous response stopped.
    assert!(
        watches
            .iter()
            .any(|r| r.contains(&format!("resourceVersion={}", revs[1].0))),
        "{watches:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_as_an_http_status_is_compacted_too() {
    let t = KubeUnderTest::start().await;
    let r = t
        .store
        .create(Kind::BgpPeer, "p", b"{}".to_vec())
        .await
        .unwrap();
    t.store
        .update(Kind::BgpPeer, "p", br#"{"x":1}"#.to_vec(), &r)
        .await
        .unwrap();
    t.server.compact();
    t.server.set_gone_as_http_status(true);
    let first = match t.store.watch(Kind::BgpPeer, Some(&r)).await {
        Err(e) => Err(e),
        Ok(mut w) => next(&mut w).await,
    };
    assert!(matches!(first, Err(StoreError::Compacted(_))), "{first:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_failures_are_unavailable_not_panics() {
    let t = KubeUnderTest::start().await;
    t.server.fail_next(503, "upstream connect error");
    let err = t.store.get(Kind::IpPool, "p").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Unavailable(m) if m.contains("503")),
        "{err:?}"
    );

    t.server.fail_next(
        403,
        &json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                 "message": "ippools.crd.felix-rs.io is forbidden: User \"x\" cannot list resource",
                 "reason": "Forbidden", "code": 403 })
        .to_string(),
    );
    let err = t.store.list(Kind::IpPool, "").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Unavailable(m) if m.contains("forbidden")),
        "{err:?}"
    );

    t.server.fail_next(200, "this is not JSON");
    let err = t.store.list(Kind::IpPool, "").await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");

    // And the store works again afterwards.
    t.store
        .create(Kind::IpPool, "p", b"{}".to_vec())
        .await
        .unwrap();
}

/// Lists come in pages of `limit` objects joined by `continue` tokens, one
/// snapshot at the first page's resourceVersion; a token that expired
/// (410) starts the list again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_paginated_and_restart_when_a_token_expires() {
    let t = KubeUnderTest::start().await;
    let store = ipam::store::kubernetes::KubeStore::new(t.server.client()).with_list_page(2);
    let mut last = None;
    for i in 0..5 {
        last = Some(
            store
                .create(Kind::IpPool, &format!("p{i}"), b"{}".to_vec())
                .await
                .unwrap(),
        );
    }
    let lists = |requests: Vec<String>| {
        requests
            .into_iter()
            .filter(|r| r.starts_with("GET /apis/crd.felix-rs.io/v1/ippools?"))
            .collect::<Vec<_>>()
    };
    let before = lists(t.server.requests()).len();
    let listing = store.list(Kind::IpPool, "").await.unwrap();
    let names: Vec<_> = listing.objects.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["p0", "p1", "p2", "p3", "p4"]);
    assert_eq!(Some(listing.revision.clone()), last);
    let pages = lists(t.server.requests()).split_off(before);
    assert_eq!(pages.len(), 3, "{pages:?}");
    assert!(pages.iter().all(|p| p.contains("limit=2")), "{pages:?}");
    assert_eq!(pages.iter().filter(|p| p.contains("continue=")).count(), 2);
    // Prefix filtering and names-only listing go through the same pages.
    assert_eq!(
        store.list(Kind::IpPool, "p3").await.unwrap().objects.len(),
        1
    );
    assert_eq!(store.list_names(Kind::IpPool, "").await.unwrap().len(), 5);

    t.server.expire_next_continue();
    let before = lists(t.server.requests()).len();
    let again = store.list(Kind::IpPool, "").await.unwrap();
    assert_eq!(again, listing);
    // Page 1, page 2 refused (410), then pages 1-3 again.
    assert_eq!(lists(t.server.requests()).len() - before, 5);
}
