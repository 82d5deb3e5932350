//! TLS handshakes and `maxclients`, in a process of its own (the node's registry of Redis
//! connections is process-wide, and other tests' connections would share it).

use cairn_api::redis::clients::{self, Peer};

/// TLS handshakes under way count against `maxclients` with the open connections: a flood of
/// connections that never finish their handshake holds no more than the limit. (They once did
/// not count, so each held a socket and its TLS state for up to 10 s, without bound.)
#[test]
fn handshakes_under_way_count_against_maxclients() {
    let max = 4;
    let open: Vec<_> = (0..2).map(|_| clients::register(Peer::default(), max).expect("room")).collect();
    let shaking: Vec<_> = (0..2).map(|_| clients::handshake(max).expect("room")).collect();
    assert!(clients::handshake(max).is_none(), "a handshake past maxclients");
    assert!(clients::register(Peer::default(), max).is_none(), "a connection past maxclients");
    // A handshake over gives its place back, which the connection then takes.
    drop(shaking);
    let third = clients::register(Peer::default(), max).expect("room after the handshakes");
    assert!(clients::handshake(max).is_some());
    drop((open, third));
    assert_eq!(clients::count(), 0);
}
