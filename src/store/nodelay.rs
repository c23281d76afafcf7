//! TCP_NODELAY on the sockets of our PostgreSQL connections.
//!
//! sqlx 0.9.0 stopped setting it (launchbadge/sqlx#4335; fixed upstream by
//! #4336, not released yet). Without it, Nagle's algorithm holds the tail of
//! a large message (a multi-row insert) until the server's delayed ACK, 40 ms
//! later: measured here, it cut transaction ingest on PostgreSQL over TCP to a
//! quarter of what the same server does over its Unix socket. sqlx does not
//! expose the socket, so each new connection sets the option on the process's
//! TCP sockets whose peer is the database port. Remove with the sqlx release
//! that sets it again.

use std::os::fd::BorrowedFd;

/// Sets TCP_NODELAY on every TCP socket of this process connected to `port`.
pub fn apply(port: u16) {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for entry in fds.flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // SAFETY: the descriptor is only borrowed for two socket option calls
        // and never closed here. Were it closed and reused meanwhile, the calls
        // would fail or set TCP_NODELAY on another socket, which is harmless.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&fd);
        let to_db = sock
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .is_some_and(|a| a.port() == port);
        if to_db && sock.tcp_nodelay().is_ok_and(|on| !on) {
            let _ = sock.set_tcp_nodelay(true);
        }
    }
}
