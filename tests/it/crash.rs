//! `crash` against `kill`, as the PEER sees them: the same victim (`fij-net`, src/bin), the same
//! trigger (its first `clock_nanosleep`, right after its handshake), only the action differs.
//! A kill lets the victim's host say goodbye (FIN, RST, ICMP port unreachable, refused connects);
//! a crash must say nothing at all, on the wire as to the peer's sockets, until `recover_after`.
//!
//! Real sockets on `lo` (IPv4 and IPv6) and across a veth pair into a network namespace the test
//! creates; packet counts come from an `AF_PACKET` capture in the test process. Each test prints
//! what it measured (`--nocapture`).
//!
//! On a kernel without tcx (before 6.6: Debian 12's 6.1 in the kernel lab) fij refuses `crash`;
//! there each crash test asserts that refusal instead (`fij_tests::tcx`), and the kill tests run.
use std::{
    io::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use fij_tests::{
    FijOutput, bpf_fds, cleanup_timeout, fij_programs, links, net::*, send_signal,
    tcx::refused_without_tcx, wait_no_fij_programs, wait_until,
};

/// How long a crashed victim's peer must hear nothing.
const WINDOW: Duration = Duration::from_secs(2);
/// "At once": how fast the peer of a killed victim must learn it.
const AT_ONCE: Duration = Duration::from_secs(1);

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

const CRASH: &str = "action = \"crash\"";
const KILL: &str = "action = \"kill\"";

/// The log of a crash or kill of `victim` on its first clock_nanosleep.
fn assert_died(out: &FijOutput, victim: u32) {
    out.log
        .assert_injections("clock_nanosleep", "SIGKILL", &[(1, victim)]);
    assert_eq!(out.log.exit_status(victim), "signal SIGKILL", "{out}");
}

/// The `silenced` records of the log as (protocol, local port, remote port), sorted.
fn silenced(out: &FijOutput) -> Vec<(String, u16, u16)> {
    let mut tuples: Vec<_> = out
        .log
        .records("silenced")
        .iter()
        .map(|r| {
            (
                r["protocol"].as_str().unwrap().to_owned(),
                r["local_port"].as_u64().unwrap() as u16,
                r["remote_port"].as_u64().unwrap() as u16,
            )
        })
        .collect();
    tuples.sort();
    tuples
}

fn tcp(local: u16, remote: u16) -> (String, u16, u16) {
    ("tcp".to_owned(), local, remote)
}

fn local_port(stream: &TcpStream) -> u16 {
    stream.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------------------
// 1. An established connection, peer idle.

/// The peer of a crashed server, idle on a blocking read: nothing for the whole window (no EOF,
/// no ECONNRESET), nothing of the victim's on the wire, while a bystander connection on `lo`
/// goes on. After the campaign, `lo` is as before and the port serves again.
#[test]
fn crash_established_idle_peer_hears_nothing() {
    if refused_without_tcx(CRASH) {
        return;
    }
    let qdiscs_before = tc_qdiscs("lo");
    let bystander = Bystander::start(V4);
    let mut c = Campaign::start("crash-idle", &["tcp", "127.0.0.1"], CRASH);
    let capture = Capture::start("lo");
    let mut peer = connect_and_greet(c.addr(V4));
    let peer_port = local_port(&peer);
    let (outcome, took) = read_once(&mut peer, WINDOW);
    eprintln!("crash, idle peer: read → {outcome:?} after {took:?}");
    assert_eq!(
        outcome,
        ReadOutcome::TimedOut,
        "the peer of a crashed victim must hear nothing"
    );
    c.wait_dead();
    let trips = bystander.assert_flows(20, Duration::from_secs(2), "while the victim is crashed");
    eprintln!("bystander on lo: 20 round trips in {trips:?} during the crash");
    let packets = capture.stop();
    let port = c.ports[0];
    let counts = count(
        &packets,
        port,
        Instant::now() - Duration::from_secs(60),
        Copies::Sent,
    );
    eprintln!("wire, port {port}: {counts:?} (handshake included)");
    assert_eq!(
        counts.farewells(),
        0,
        "no FIN/RST/ICMP of the crashed victim on the wire: {counts:?}"
    );

    let (tc_prog, _) = fij_tc_links(c.fij.pid());
    let (out, _dir) = c.interrupt();
    assert_died(&out, c_victim(&out));
    assert_eq!(
        silenced(&out),
        [tcp(port, 0), tcp(port, peer_port)],
        "{out}"
    );
    // Ended by SIGINT while the crash was in effect: the log says the host came back, with the
    // tuples it silenced, before the end.
    let recovered = out.log.one("recovered");
    assert_eq!(recovered["pid"], c_victim(&out), "{out}");
    assert_eq!(recovered["tuples"], 2, "{out}");
    bystander.assert_healthy();
    assert_tc_gone(tc_prog);
    // After fij: lo is as it was, and the port serves again.
    assert_eq!(tc_qdiscs("lo"), qdiscs_before);
    serves_again(SocketAddr::new(V4, port));
}

fn c_victim(out: &FijOutput) -> u32 {
    out.log.target_pid("victim")
}

/// The ids of the tc programs process `fij` holds (`fij_tc_ingress`, `fij_tc_egress`), and how
/// many links they have together (bpftool).
fn fij_tc_links(fij: u32) -> (Vec<u64>, usize) {
    let held = bpf_fds(fij);
    let mut progs: Vec<(String, u64)> = fij_programs()
        .into_iter()
        .filter(|p| p.name.starts_with("fij_tc_") && held.progs.contains(&p.id))
        .map(|p| (p.name, p.id))
        .collect();
    progs.sort();
    let names: Vec<&str> = progs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["fij_tc_egress", "fij_tc_ingress"],
        "fij holds its two tc programs: {held:?}"
    );
    let ids: Vec<u64> = progs.iter().map(|(_, id)| *id).collect();
    let attached = ids.iter().map(|&id| tcx_links(id)).sum();
    (ids, attached)
}

/// How many BPF links attach program `prog`.
fn tcx_links(prog: u64) -> usize {
    links()
        .into_iter()
        .filter(|l| l["prog_id"].as_u64() == Some(prog))
        .count()
}

/// Waits until programs `progs` have no link and are gone.
fn assert_tc_gone(progs: Vec<u64>) {
    wait_until(
        cleanup_timeout(),
        "fij's tcx links and programs to go",
        || {
            progs
                .iter()
                .all(|&prog| tcx_links(prog) == 0 && fij_programs().iter().all(|p| p.id != prog))
                .then_some(())
        },
    );
}

/// A new server on `addr` accepts a connection and carries data both ways.
fn serves_again(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("binding {addr} again: {e}"));
    let (mut client, took) = connect_outcome(addr, Duration::from_secs(2));
    let client = client
        .as_mut()
        .unwrap_or_else(|e| panic!("connecting to the new server on {addr}: errno {e}"));
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"hello\n").unwrap();
    read_exact_text(&mut server, "hello\n", Duration::from_secs(2));
    server.write_all(b"back\n").unwrap();
    read_exact_text(client, "back\n", Duration::from_secs(2));
    eprintln!("a new server on {addr} accepted a connection in {took:?}");
}

/// The same victim, killed: its host sends FIN at once (the victim had read everything), so
/// the peer's read returns EOF.
#[test]
fn kill_established_idle_peer_sees_eof_at_once() {
    let mut c = Campaign::start("kill-idle", &["tcp", "127.0.0.1"], KILL);
    let capture = Capture::start("lo");
    let mut peer = connect_and_greet(c.addr(V4));
    let (outcome, took) = read_once(&mut peer, WINDOW);
    eprintln!("kill, idle peer: read → {outcome:?} after {took:?}");
    assert_eq!(outcome, ReadOutcome::Eof);
    assert!(took < AT_ONCE, "EOF took {took:?}");
    c.wait_dead();
    let port = c.ports[0];
    let counts = count(
        &capture.stop(),
        port,
        Instant::now() - Duration::from_secs(60),
        Copies::Sent,
    );
    eprintln!("wire, port {port}: {counts:?}");
    assert!(
        counts.fin >= 1,
        "the killed victim's FIN must be on the wire: {counts:?}"
    );
    let victim = c.victim;
    let (out, _dir) = c.finish();
    assert_died(&out, victim);
    assert!(silenced(&out).is_empty(), "a kill silences nothing:\n{out}");
}

// ---------------------------------------------------------------------------------------------
// 2. Unread data in the victim's receive queue (kill → RST), data in flight from the peer.

/// The victim leaves the peer's `hello` unread and crashes: no RST. The peer's writes go on
/// succeeding, its reads time out, never ECONNRESET; no RST (nor anything else of the victim's
/// port) is on the wire.
#[test]
fn crash_with_unread_data_sends_no_rst() {
    if refused_without_tcx(CRASH) {
        return;
    }
    let mut c = Campaign::start("crash-unread", &["tcp", "127.0.0.1", "--unread"], CRASH);
    let capture = Capture::start("lo");
    let mut peer = connect_and_greet(c.addr(V4));
    c.wait_silenced(2);
    let crashed_at = Instant::now();
    let mut writes = 0;
    while crashed_at.elapsed() < WINDOW {
        peer.write_all(&[b'x'; 100])
            .unwrap_or_else(|e| panic!("the peer's write {} failed: {e}", writes + 1));
        writes += 1;
        let (outcome, _) = read_once(&mut peer, Duration::from_millis(250));
        assert_eq!(
            outcome,
            ReadOutcome::TimedOut,
            "after {:?} and {writes} writes",
            crashed_at.elapsed()
        );
    }
    let info = tcp_info(&peer);
    eprintln!(
        "crash, unread data: {writes} writes of 100 bytes all succeeded, reads timed out; peer {info:?}"
    );
    let port = c.ports[0];
    let all = count(
        &capture.packets(),
        port,
        crashed_at - Duration::from_secs(60),
        Copies::Sent,
    );
    let after = count(&capture.stop(), port, crashed_at, Copies::Sent);
    eprintln!("wire, port {port}: whole capture {all:?}; after the crash {after:?}");
    assert_eq!(all.rst, 0, "no RST on the wire: {all:?}");
    assert_eq!(
        after.packets, 0,
        "nothing of the victim's port on the wire after the crash: {after:?}"
    );
    assert_eq!(
        info.state, 1,
        "the peer's connection is still ESTABLISHED: {info:?}"
    );
    let (out, _dir) = c.interrupt();
    assert_died(&out, c_victim(&out));
}

/// The same, killed: unread data makes the victim's host send RST; the peer's read fails with
/// ECONNRESET at once.
#[test]
fn kill_with_unread_data_resets_at_once() {
    let mut c = Campaign::start("kill-unread", &["tcp", "127.0.0.1", "--unread"], KILL);
    let capture = Capture::start("lo");
    let mut peer = connect_and_greet(c.addr(V4));
    let (outcome, took) = read_once(&mut peer, WINDOW);
    eprintln!("kill, unread data: read → {outcome:?} after {took:?}");
    assert_eq!(outcome, ReadOutcome::Error(libc::ECONNRESET));
    assert!(took < AT_ONCE, "ECONNRESET took {took:?}");
    c.wait_dead();
    let port = c.ports[0];
    let counts = count(
        &capture.stop(),
        port,
        Instant::now() - Duration::from_secs(60),
        Copies::Sent,
    );
    eprintln!("wire, port {port}: {counts:?}");
    assert!(
        counts.rst >= 1,
        "the killed victim's RST must be on the wire: {counts:?}"
    );
    let victim = c.victim;
    let (out, _dir) = c.finish();
    assert_died(&out, victim);
}

/// Data the peer sends to a crashed host is lost in the network, as with a real crash: the peer
/// retransmits it with exponential backoff (RTO 200 ms on lo: retransmissions at about 0.2,
/// 0.6, 1.4, 3.0, 6.2 s) and keeps the connection (`tcp_retries2` = 15 gives up after ~15 min),
/// so within 9 s it has retransmitted at least 3 times and no call has failed.
#[test]
fn crash_peer_retransmits_with_backoff_and_keeps_the_connection() {
    if refused_without_tcx(CRASH) {
        return;
    }
    let mut c = Campaign::start("crash-retrans", &["tcp", "127.0.0.1"], CRASH);
    let mut peer = connect_and_greet(c.addr(V4));
    c.wait_silenced(2);
    peer.write_all(&[b'x'; 1000]).expect("the peer's write");
    let sent = Instant::now();
    let mut timeline = Vec::new();
    let mut failure = None;
    while sent.elapsed() < Duration::from_secs(9) {
        let (outcome, _) = read_once(&mut peer, Duration::from_millis(250));
        let info = tcp_info(&peer);
        timeline.push(format!(
            "{:>5.2}s {outcome:?} {info:?}",
            sent.elapsed().as_secs_f64()
        ));
        if outcome != ReadOutcome::TimedOut {
            failure = Some(outcome);
            break;
        }
    }
    let info = tcp_info(&peer);
    let timeline = timeline.join("\n");
    eprintln!("crash, data in flight from the peer:\n{timeline}");
    let (out, _dir) = c.interrupt();
    assert_died(&out, c_victim(&out));
    assert_eq!(
        failure, None,
        "the peer gave up on the crashed host within 9 s:\n{timeline}"
    );
    assert!(
        info.total_retrans >= 3 && info.backoff >= 3,
        "the peer must retransmit with backoff (lost in the network), not see local drops:\n{timeline}"
    );
}

/// TCP keepalive detects a crashed host: with idle 1 s, interval 1 s and 2 probes, an idle
/// peer's read fails with ETIMEDOUT about 3 s after the last exchange (a real crash: the probes
/// go unanswered).
#[test]
fn crash_peer_keepalive_detects_the_dead_host() {
    if refused_without_tcx(CRASH) {
        return;
    }
    let c = Campaign::start("crash-keepalive", &["tcp", "127.0.0.1"], CRASH);
    let peer = TcpStream::connect_timeout(&c.addr(V4), Duration::from_secs(5)).expect("connecting");
    set_int_opt(&peer, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set_int_opt(&peer, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 1);
    set_int_opt(&peer, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 1);
    set_int_opt(&peer, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 2);
    let mut peer = peer;
    peer.write_all(b"hello\n").unwrap();
    read_exact_text(&mut peer, "ready\n", Duration::from_secs(5));
    let (outcome, took) = read_once(&mut peer, Duration::from_secs(4));
    let info = tcp_info(&peer);
    eprintln!("crash, keepalive peer: read → {outcome:?} after {took:?}; {info:?}");
    let (out, _dir) = c.interrupt();
    assert_died(&out, c_victim(&out));
    assert_eq!(
        outcome,
        ReadOutcome::Error(libc::ETIMEDOUT),
        "keepalive must declare the crashed host dead after ~3 s (read took {took:?}, {info:?})"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. A new connect() to the victim's listening port.

/// After a crash, a new connection gets neither SYN-ACK nor RST: connect() times out.
#[test]
fn crash_new_connect_times_out() {
    if refused_without_tcx(CRASH) {
        return;
    }
    let mut c = Campaign::start("crash-connect", &["tcp", "127.0.0.1"], CRASH);
    let _peer = connect_and_greet(c.addr(V4));
    c.wait_silenced(2);
    let capture = Capture::start("lo");
    let started = Instant::now();
    let (result, took) = connect_outcome(c.addr(V4), Duration::from_secs(2));
    eprintln!(
        "crash, new connect: {:?} after {took:?}",
        result.as_ref().map(|_| "connected")
    );
    assert_eq!(
        result.err(),
        Some(libc::ETIMEDOUT),
        "connect to a crashed host must time out"
    );
    let port = c.ports[0];
    let counts = count(&capture.stop(), port, started, Copies::Sent);
    eprintln!("wire, port {port}, from the connect on: {counts:?}");
    assert_eq!(
        (counts.syn_ack, counts.rst, counts.packets),
        (0, 0, 0),
        "{counts:?}"
    );
    let (out, _dir) = c.interrupt();
    assert_died(&out, c_victim(&out));
}

/// After a kill, the same connect() is refused at once (the host answers the SYN with RST).
#[test]
fn kill_new_connect_is_refused() {
    let mut c = Campaign::start("kill-connect", &["tcp", "127.0.0.1"], KILL);
    let _peer = connect_and_greet(c.addr(V4));
    c.wait_dead();
    // Its exit is logged before its files are closed: wait for the listener to go.
    let port = c.ports[0];
    wait_until(
        Duration::from_secs(2),
        "the killed victim's listener to close",
        || (!listening(port)).then_some(()),
    );
    let (result, took) = connect_outcome(c.addr(V4), Duration::from_secs(2));
    eprintln!(
        "kill, new connect: {:?} after {took:?}",
        result.as_ref().map(|_| "connected")
    );
    assert_eq!(result.err(), Some(libc::ECONNREFUSED));
    assert!(took < AT_ONCE, "refusal took {took:?}");
    let victim = c.victim;
    let (out, _dir) = c.finish();
    assert_died(&out, victim);
}

// ---------------------------------------------------------------------------------------------
// 4. UDP.

/// A connected UDP peer of a crashed, bound victim: its datagrams vanish; no ICMP port
/// unreachable comes back, so it never sees ECONNREFUSED.
#[test]
fn crash_udp_peer_never_sees_refused() {
    if refused_without_tcx(CRASH) {
        return;
    }
    let mut c = Campaign::start("crash-udp", &["udp", "127.0.0.1"], CRASH);
    let capture = Capture::start("lo");
    let peer = udp_peer(c.addr(V4));
    c.wait_silenced(1);
    let crashed_at = Instant::now();
    let mut sent = 0;
    while crashed_at.elapsed() < WINDOW {
        peer.send(b"ping")
            .unwrap_or_else(|e| panic!("send {} failed: {e}", sent + 1));
        sent += 1;
        let outcome = udp_recv(&peer, Duration::from_millis(100));
        assert_eq!(outcome, ReadOutcome::TimedOut, "after {sent} datagrams");
    }
    let port = c.ports[0];
    let counts = count(&capture.stop(), port, crashed_at, Copies::Sent);
    eprintln!("crash, UDP: {sent} datagrams sent, no error; wire after the crash: {counts:?}");
    assert_eq!(
        (counts.port_unreachable, counts.packets),
        (0, 0),
        "{counts:?}"
    );
    let (out, _dir) = c.interrupt();
    assert_died(&out, c_victim(&out));
    assert_eq!(silenced(&out), [("udp".to_owned(), port, 0)], "{out}");
}

/// The same, killed: the first datagram after its death draws ICMP port unreachable, and the
/// connected peer gets ECONNREFUSED.
#[test]
fn kill_udp_peer_sees_refused() {
    let mut c = Campaign::start("kill-udp", &["udp", "127.0.0.1"], KILL);
    let capture = Capture::start("lo");
    let peer = udp_peer(c.addr(V4));
    c.wait_dead();
    let started = Instant::now();
    let mut outcome = ReadOutcome::TimedOut;
    let mut sent = 0;
    while started.elapsed() < AT_ONCE && outcome == ReadOutcome::TimedOut {
        match peer.send(b"ping") {
            Ok(_) => sent += 1,
            Err(e) => {
                outcome = ReadOutcome::Error(e.raw_os_error().unwrap());
                break;
            }
        }
        outcome = udp_recv(&peer, Duration::from_millis(50));
    }
    let took = started.elapsed();
    let port = c.ports[0];
    let counts = count(&capture.stop(), port, started, Copies::Sent);
    eprintln!("kill, UDP: {outcome:?} after {took:?} and {sent} datagrams; wire: {counts:?}");
    assert_eq!(outcome, ReadOutcome::Error(libc::ECONNREFUSED));
    assert!(counts.port_unreachable >= 1, "{counts:?}");
    let victim = c.victim;
    let (out, _dir) = c.finish();
    assert_died(&out, victim);
}

/// A connected UDP socket that has done the victim's handshake (`hello` → `ready`).
fn udp_peer(victim: SocketAddr) -> UdpSocket {
    let peer = UdpSocket::bind(SocketAddr::new(victim.ip(), 0)).unwrap();
    peer.connect(victim).unwrap();
    peer.send(b"hello").unwrap();
    assert_eq!(
        udp_recv(&peer, Duration::from_secs(5)),
        ReadOutcome::Data(b"ready".to_vec())
    );
    peer
}

fn udp_recv(socket: &UdpSocket, timeout: Duration) -> ReadOutcome {
    socket.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 64];
    ReadOutcome::from_result(socket.recv(&mut buf), &buf)
}

// ---------------------------------------------------------------------------------------------
// 6. Across network namespaces.

/// Victim in a network namespace of the test behind a veth pair, peer in the init namespace on
/// the other end: the crash is silent there too (idle read times out, a new connect times out).
#[test]
fn crash_in_a_netns_is_silent() {
    if refused_without_tcx(CRASH) {
        return;
    }
    let ns = NetNs::new();
    let ip = IpAddr::V4(ns.ns_addr);
    let addr_arg = ns.ns_addr.to_string();
    let mut c = Campaign::start_wrapped("crash-netns", &["tcp", &addr_arg], CRASH, |argv| {
        ns.exec_argv(argv)
    });
    let capture = Capture::start(&ns.host_if);
    let mut peer = connect_and_greet(c.addr(ip));
    let peer_port = local_port(&peer);
    let (outcome, took) = read_once(&mut peer, Duration::from_secs(2));
    eprintln!("crash in netns, idle peer: read → {outcome:?} after {took:?}");
    assert_eq!(outcome, ReadOutcome::TimedOut);
    c.wait_silenced(2);
    let (connect, took) = connect_outcome(c.addr(ip), Duration::from_secs(1));
    eprintln!(
        "crash in netns, new connect: {:?} after {took:?}",
        connect.as_ref().map(|_| "connected")
    );
    assert_eq!(connect.err(), Some(libc::ETIMEDOUT));
    let port = c.ports[0];
    let packets = capture.stop();
    let incoming = count(
        &packets,
        port,
        Instant::now() - Duration::from_secs(60),
        Copies::Received,
    );
    eprintln!(
        "wire on {} (the capture taps ingress before tcx drops): from the namespace {incoming:?}",
        ns.host_if
    );
    let (out, _dir) = c.interrupt();
    assert_died(&out, c_victim(&out));
    assert_eq!(
        silenced(&out),
        [tcp(port, 0), tcp(port, peer_port)],
        "{out}"
    );
}

/// The same victim in the namespace, killed: EOF at once, and a new connect is refused.
#[test]
fn kill_in_a_netns_is_eof() {
    let ns = NetNs::new();
    let ip = IpAddr::V4(ns.ns_addr);
    let addr_arg = ns.ns_addr.to_string();
    let mut c = Campaign::start_wrapped("kill-netns", &["tcp", &addr_arg], KILL, |argv| {
        ns.exec_argv(argv)
    });
    let mut peer = connect_and_greet(c.addr(ip));
    let (outcome, took) = read_once(&mut peer, WINDOW);
    eprintln!("kill in netns, idle peer: read → {outcome:?} after {took:?}");
    assert_eq!(outcome, ReadOutcome::Eof);
    assert!(took < AT_ONCE, "EOF took {took:?}");
    c.wait_dead();
    let (connect, took) = connect_outcome(c.addr(ip), Duration::from_secs(1));
    eprintln!(
        "kill in netns, new connect: {:?} after {took:?}",
        connect.as_ref().map(|_| "connected")
    );
    assert_eq!(connect.err(), Some(libc::ECONNREFUSED), "after {took:?}");
    let victim = c.victim;
    let (out, _dir) = c.finish();
    assert_died(&out, victim);
}

/// The namespace and veth of a test are gone after it, even when it fails.
#[test]
fn netns_guard_removes_everything() {
    let (name, host_if) = {
        let ns = NetNs::new();
        assert_eq!(NetNs::exists(&ns.name, &ns.host_if), (true, true));
        // A test that panics with a namespace of its own (quietly: no panic message).
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let inner = std::thread::spawn(|| {
            let inner = NetNs::new();
            let names = (inner.name.clone(), inner.host_if.clone());
            std::panic::panic_any(names);
        })
        .join();
        std::panic::set_hook(hook);
        let (inner_name, inner_if) = *inner
            .expect_err("the inner test panics")
            .downcast::<(String, String)>()
            .unwrap();
        assert_eq!(NetNs::exists(&inner_name, &inner_if), (false, false));
        (ns.name.clone(), ns.host_if.clone())
    };
    assert_eq!(NetNs::exists(&name, &host_if), (false, false));
    let leftovers: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    let mine = format!("fij-test-{}-", std::process::id());
    assert!(
        !leftovers.iter().any(|n| n.starts_with(&mine)),
        "left over: {leftovers:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. IPv6.

/// Over `::1`: the crashed victim's idle peer hears nothing, and nothing is on the wire.
#[test]
fn crash_over_ipv6_is_silent() {
    if refused_without_tcx(CRASH) {
        return;
    }
    let c = Campaign::start("crash-v6", &["tcp", "::1"], CRASH);
    let capture = Capture::start("lo");
    let mut peer = connect_and_greet(c.addr(V6));
    let peer_port = local_port(&peer);
    let (outcome, took) = read_once(&mut peer, WINDOW);
    eprintln!("crash over ::1, idle peer: read → {outcome:?} after {took:?}");
    assert_eq!(outcome, ReadOutcome::TimedOut);
    let port = c.ports[0];
    let counts = count(
        &capture.stop(),
        port,
        Instant::now() - Duration::from_secs(60),
        Copies::Sent,
    );
    assert_eq!(counts.farewells(), 0, "{counts:?}");
    let (connect, _) = connect_outcome(c.addr(V6), Duration::from_secs(1));
    assert_eq!(connect.err(), Some(libc::ETIMEDOUT));
    let (out, _dir) = c.interrupt();
    assert_died(&out, c_victim(&out));
    assert_eq!(
        silenced(&out),
        [tcp(port, 0), tcp(port, peer_port)],
        "{out}"
    );
}

/// Over `::1`, killed: EOF at once.
#[test]
fn kill_over_ipv6_is_eof() {
    let mut c = Campaign::start("kill-v6", &["tcp", "::1"], KILL);
    let mut peer = connect_and_greet(c.addr(V6));
    let (outcome, took) = read_once(&mut peer, WINDOW);
    eprintln!("kill over ::1, idle peer: read → {outcome:?} after {took:?}");
    assert_eq!(outcome, ReadOutcome::Eof);
    assert!(took < AT_ONCE, "EOF took {took:?}");
    c.wait_dead();
    let victim = c.victim;
    let (out, _dir) = c.finish();
    assert_died(&out, victim);
}

// ---------------------------------------------------------------------------------------------
// 9. recover_after.

/// `recover_after`: silence until the `recovered` record, then "the host is back, with no
/// state": the peer's next segment is answered with RST (ECONNRESET), no EOF first.
#[test]
fn crash_recover_after_answers_with_rst() {
    if refused_without_tcx(CRASH) {
        return;
    }
    let mut c = Campaign::start(
        "crash-recover",
        &["tcp", "127.0.0.1"],
        &format!("{CRASH}\nrecover_after = \"1500ms\""),
    );
    let mut peer = connect_and_greet(c.addr(V4));
    let greeted = Instant::now();
    let (outcome, _) = read_once(&mut peer, Duration::from_millis(1200));
    assert_eq!(outcome, ReadOutcome::TimedOut, "silent before recovery");
    c.fij
        .wait_for_record("the recovery", Duration::from_secs(5), |r| {
            r["event"] == "recovered"
        });
    let recovered = greeted.elapsed();
    let write = peer.write_all(b"ping\n");
    let (outcome, took) = read_once(&mut peer, AT_ONCE);
    eprintln!(
        "recovered {recovered:?} after the handshake; write → {write:?}; read → {outcome:?} after {took:?}"
    );
    assert!(write.is_ok(), "{write:?}");
    assert_eq!(
        outcome,
        ReadOutcome::Error(libc::ECONNRESET),
        "the host is back with no state: RST"
    );
    let victim = c.victim;
    let (out, _dir) = c.finish();
    assert_died(&out, victim);
    let rec = out.log.one("recovered");
    assert_eq!(rec["pid"], victim, "{out}");
    assert_eq!(rec["tuples"], 2, "{out}");
}

/// A host back from a crash has no state, so nothing of the old connection speaks on its own:
/// an idle peer hears nothing in the second after the `recovered` record (no FIN), and its next
/// segment then meets RST.
#[test]
fn crash_recover_after_sends_no_late_fin() {
    if refused_without_tcx(CRASH) {
        return;
    }
    let mut c = Campaign::start(
        "crash-late-fin",
        &["tcp", "127.0.0.1"],
        &format!("{CRASH}\nrecover_after = \"1s\""),
    );
    let mut peer = connect_and_greet(c.addr(V4));
    c.fij
        .wait_for_record("the recovery", Duration::from_secs(5), |r| {
            r["event"] == "recovered"
        });
    let (idle, took) = read_once(&mut peer, Duration::from_secs(1));
    eprintln!("idle peer after recovery: read → {idle:?} after {took:?}");
    let write = peer.write_all(b"ping\n");
    let (outcome, _) = read_once(&mut peer, AT_ONCE);
    eprintln!("then write → {write:?}; read → {outcome:?}");
    let victim = c.victim;
    let (out, _dir) = c.finish();
    assert_died(&out, victim);
    assert_eq!(
        idle,
        ReadOutcome::TimedOut,
        "a host back with no state sends no FIN (got {idle:?} {took:?} after recovery)"
    );
    assert_eq!(outcome, ReadOutcome::Error(libc::ECONNRESET));
}

// ---------------------------------------------------------------------------------------------
// 12. Cleanup after fij is SIGKILLed during a crash.

/// fij SIGKILLed while a crash's silence holds: its tc programs and links go with it, `lo`'s
/// qdiscs are as before, and traffic on the silenced port flows again.
#[test]
fn crash_cleanup_after_fij_is_sigkilled() {
    if refused_without_tcx(CRASH) {
        return;
    }
    let qdiscs_before = tc_qdiscs("lo");
    let mut c = Campaign::start("crash-sigkill", &["tcp", "127.0.0.1"], CRASH);
    let mut peer = connect_and_greet(c.addr(V4));
    c.wait_silenced(2);
    assert_eq!(
        read_once(&mut peer, Duration::from_millis(500)).0,
        ReadOutcome::TimedOut
    );
    let (tc_prog, attached) = fij_tc_links(c.fij.pid());
    let interfaces = std::fs::read_dir("/sys/class/net").unwrap().count();
    eprintln!("fij_tc_* (progs {tc_prog:?}) have {attached} links, {interfaces} interfaces");
    assert_eq!(
        attached,
        2 * interfaces,
        "ingress + egress on every interface"
    );
    let port = c.ports[0];
    send_signal(c.fij.pid(), libc::SIGKILL);
    let out = c.fij.finish();
    assert_eq!(out.ended, fij_tests::Ended::Signal(libc::SIGKILL), "{out}");
    if let Err(left) = wait_no_fij_programs(cleanup_timeout()) {
        panic!("fij programs left after SIGKILL: {left:?}");
    }
    assert_tc_gone(tc_prog);
    assert_eq!(tc_qdiscs("lo"), qdiscs_before);
    serves_again(SocketAddr::new(V4, port));
    // The old connection's peer now meets the host "back with no state".
    peer.write_all(b"ping\n").unwrap();
    let (outcome, took) = read_once(&mut peer, AT_ONCE);
    eprintln!("old connection after fij died: read → {outcome:?} after {took:?}");
}
