//! The relay over loopback sockets with in-memory stores: convergence through the core
//! drivers, live announcements, and the authentication and limit attacks of DESIGN §8.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use shoal_core::codec::Encode;
use shoal_core::control::ControlOp;
use shoal_core::store::MemoryLogStore;
use shoal_core::{
    DeviceKey, Domain, HasCursors, Hlc, LogSource, MemoryReplica, Op, Payload, WorkspaceId, pull,
};
use shoal_relay::auth::auth_message;
use shoal_relay::client::{ConnectOptions, RemoteReplica};
use shoal_relay::frame::RelayId;
use shoal_relay::frame::{Frame, PROTOCOL_VERSION, RefuseCode, Request};
use shoal_relay::server::{Relay, RelayConfig};
use tokio_tungstenite::tungstenite::Message;

async fn start_relay(config: RelayConfig) -> (String, Arc<Relay>) {
    let relay = Relay::new(Arc::new(MemoryLogStore::new()), config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let r = relay.clone();
    tokio::spawn(async move { r.serve(listener, std::future::pending()).await });
    (url, relay)
}

fn data(n: u8) -> Payload {
    Payload {
        hlc: Hlc::from_millis(1_000 + u64::from(n)),
        author: None,
        ops: vec![Op { domain: Domain::TABLES, kind: 0, body: vec![n] }],
    }
}

/// An open workspace (a genesis without policy) founded by `creator`.
fn found(creator: &DeviceKey) -> (WorkspaceId, MemoryReplica) {
    let salt = [4; 16];
    let ws = WorkspaceId::derive(&creator.public_key(), &salt);
    let a = MemoryReplica::new(ws, Some(creator.clone()));
    let genesis = ControlOp::genesis(creator.public_key(), salt).to_op();
    a.append_local(vec![Payload {
        hlc: Hlc::from_millis(1_000),
        author: None,
        ops: vec![genesis],
    }])
    .unwrap();
    (ws, a)
}

#[tokio::test]
async fn two_devices_converge_through_a_relay_with_live_announcements() {
    let (url, _relay) = start_relay(RelayConfig::new(RelayId([1; 32]))).await;
    let ka = DeviceKey::from_secret_bytes(&[1; 32]);
    let kb = DeviceKey::from_secret_bytes(&[2; 32]);
    let (ws, a) = found(&ka);
    let b = MemoryReplica::new(ws, Some(kb.clone()));
    for i in 0..50 {
        a.append_local(vec![data(i)]).unwrap();
        b.append_local(vec![data(100 + i)]).unwrap();
    }

    let ra = RemoteReplica::connect(&url, ws, &ka).await.unwrap();
    let report = pull(&a, &ra).await.unwrap();
    assert_eq!(report.new, 51, "{report:?}");
    let rb = RemoteReplica::connect(&url, ws, &kb).await.unwrap();
    let mut a_watch = ra.watch_cursors();
    a_watch.next().await.unwrap(); // the snapshot
    pull(&b, &rb).await.unwrap();
    pull(&rb, &b).await.unwrap();
    // A hears of B's entries without asking.
    let ev = tokio::time::timeout(Duration::from_secs(5), a_watch.next()).await.unwrap().unwrap();
    assert!(matches!(ev, shoal_core::CursorsEvent::Advanced(c) if c.get(&kb.peer_id(&ws)) == 50));
    pull(&ra, &a).await.unwrap();
    assert_eq!(a.contents(), b.contents());
    assert_eq!(a.cursors().await.unwrap(), ra.cursors().await.unwrap());
}

type Raw =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn raw(url: &str) -> (Raw, RelayId, [u8; 32]) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}/v1/sync")).await.unwrap();
    match recv(&mut ws).await {
        Some(Frame::Hello { relay, challenge, .. }) => (ws, relay, challenge),
        other => panic!("expected hello, got {other:?}"),
    }
}

async fn recv(ws: &mut Raw) -> Option<Frame> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.ok()?? {
            Ok(Message::Binary(b)) => return Some(Frame::decode(&b).unwrap()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn send(ws: &mut Raw, frame: &Frame) {
    let _ = ws.send(Message::Binary(frame.to_bytes().into())).await;
}

fn auth(key: &DeviceKey, ws: WorkspaceId, relay: RelayId, challenge: [u8; 32]) -> Frame {
    let peer = key.peer_id(&ws);
    let signature = key.sign(&auth_message(&relay, &challenge, &ws, &peer));
    Frame::Auth { version: PROTOCOL_VERSION, workspace: ws, key: key.public_key(), signature }
}

async fn refused(ws: &mut Raw) -> Option<(RefuseCode, String)> {
    while let Some(f) = recv(ws).await {
        if let Frame::Refused { code, message } = f {
            return Some((code, message));
        }
    }
    None
}

#[tokio::test]
async fn replayed_foreign_and_forged_authentications_are_refused_naming_the_device() {
    let (url, _relay) = start_relay(RelayConfig::new(RelayId([1; 32]))).await;
    let k = DeviceKey::from_secret_bytes(&[1; 32]);
    let (ws_id, _) = found(&k);
    let peer = k.peer_id(&ws_id).to_hex();

    // A signature from an earlier connection, replayed on a new one.
    let (_, relay, old_challenge) = raw(&url).await;
    let (mut ws, _, _) = raw(&url).await;
    send(&mut ws, &auth(&k, ws_id, relay, old_challenge)).await;
    let (code, msg) = refused(&mut ws).await.unwrap();
    assert_eq!(code, RefuseCode::BadAuth);
    assert!(msg.contains(&peer), "{msg}");

    // A signature made for another relay.
    let (mut ws, _, challenge) = raw(&url).await;
    send(&mut ws, &auth(&k, ws_id, RelayId([2; 32]), challenge)).await;
    assert_eq!(refused(&mut ws).await.unwrap().0, RefuseCode::BadAuth);

    // Someone else's key claiming to be the device.
    let (mut ws, relay, challenge) = raw(&url).await;
    let mut forged = auth(&DeviceKey::from_secret_bytes(&[9; 32]), ws_id, relay, challenge);
    if let Frame::Auth { key, .. } = &mut forged {
        *key = k.public_key();
    }
    send(&mut ws, &forged).await;
    assert_eq!(refused(&mut ws).await.unwrap().0, RefuseCode::BadAuth);

    // Garbage, and a request before authenticating.
    let (mut ws, _, _) = raw(&url).await;
    ws.send(Message::Binary(vec![0xee, 1, 2, 3].into())).await.unwrap();
    let (code, msg) = refused(&mut ws).await.unwrap();
    assert_eq!(code, RefuseCode::Protocol);
    assert!(msg.contains("127.0.0.1"), "names the peer's address: {msg}");
    let (mut ws, _, _) = raw(&url).await;
    send(&mut ws, &Frame::Request { id: 1, request: Request::Cursors }).await;
    assert_eq!(refused(&mut ws).await.unwrap().0, RefuseCode::Protocol);
}

#[tokio::test]
async fn an_entrant_reads_nothing_and_pushes_only_its_first_entry_and_an_oversize_frame_is_refused()
{
    let mut config = RelayConfig::new(RelayId([1; 32]));
    config.limits.max_frame = 64 << 10;
    let (url, _relay) = start_relay(config).await;
    let ka = DeviceKey::from_secret_bytes(&[1; 32]);
    let (ws_id, a) = found(&ka);
    // A workspace the relay does not hold: the founder is an entrant until its genesis is in.
    let ra = RemoteReplica::connect(&url, ws_id, &ka).await.unwrap();
    assert_eq!(ra.access(), shoal_relay::frame::Access::Entrant);
    let err = ra.read_since(ka.peer_id(&ws_id), 0).await.unwrap_err().to_string();
    assert!(err.contains("not a member"), "{err}");
    a.append_local(vec![data(1)]).unwrap();
    let report = pull(&a, &ra).await.unwrap();
    assert_eq!(ra.access(), shoal_relay::frame::Access::Member, "the genesis made it the founder");
    assert_eq!((report.new, report.stalled.len()), (2, 0), "{report:?}");

    // A frame over the limit closes that connection only.
    let (mut ws, relay, challenge) = raw(&url).await;
    send(&mut ws, &auth(&ka, ws_id, relay, challenge)).await;
    assert!(matches!(recv(&mut ws).await, Some(Frame::Welcome { .. })));
    let big =
        Frame::Request { id: 1, request: Request::Read { origin: ka.peer_id(&ws_id), from: 0 } };
    let mut bytes = big.to_bytes();
    bytes.resize(100 << 10, 0);
    ws.send(Message::Binary(bytes.into())).await.ok();
    match recv(&mut ws).await {
        Some(Frame::Refused { code, .. }) => assert_eq!(code, RefuseCode::Limit),
        // The WebSocket layer may cut the connection itself at its own size limit.
        None => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(ra.cursors().await.is_ok(), "other connections keep working");
}

#[tokio::test]
async fn a_device_syncs_over_tls_trusting_the_relays_own_certificate_and_nothing_else() {
    let dir = std::env::temp_dir().join(format!("shoal-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_pem, key_pem) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
    std::fs::write(&key_pem, cert.signing_key.serialize_pem()).unwrap();

    let relay = Relay::new(Arc::new(MemoryLogStore::new()), RelayConfig::new(RelayId([1; 32])));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("wss://localhost:{}", listener.local_addr().unwrap().port());
    let (c, k) = (cert_pem.clone(), key_pem.clone());
    tokio::spawn(async move { relay.serve_tls(listener, &c, &k, std::future::pending()).await });

    let ka = DeviceKey::from_secret_bytes(&[1; 32]);
    let (ws, a) = found(&ka);
    a.append_local(vec![data(1)]).unwrap();
    // Without the relay's certificate among its roots, the device refuses the connection.
    let err = RemoteReplica::connect(&url, ws, &ka).await.unwrap_err().to_string();
    assert!(err.contains("cannot connect"), "{err}");
    let options = ConnectOptions { extra_roots: Some(cert_pem.clone()), ..Default::default() };
    let ra = RemoteReplica::connect_with(&url, ws, &ka, &options).await.unwrap();
    let report = pull(&a, &ra).await.unwrap();
    assert_eq!(report.new, 2);
    let b = MemoryReplica::new(ws, None);
    let rb = RemoteReplica::connect_with(&url, ws, &ka, &options).await.unwrap();
    pull(&rb, &b).await.unwrap();
    assert_eq!(b.contents(), a.contents());
    let _ = std::fs::remove_dir_all(&dir);
}
