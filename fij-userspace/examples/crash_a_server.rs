//! fij as a library in a test: start an echo server as fij's target, crash it on its 3rd reply
//! (`sendto`), and see what a client sees. The 3rd reply still arrives (the kernel delivers the
//! SIGKILL when that call returns; see docs/failure-semantics.md), then silence: no EOF, no
//! reset — the peer of a host that lost power. Run as root: `cargo run --example
//! crash_a_server` (needs Debian's python3).
use std::{
    io::{BufRead, BufReader, ErrorKind, Write},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use anyhow::{Context, Result, bail};

/// A one-connection echo server: every line it reads, it sends back.
const ECHO_SERVER: &str = "import socket,sys
s=socket.socket()
s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)
s.bind(('127.0.0.1',int(sys.argv[1])))
s.listen(1)
c,_=s.accept()
while True:
    d=c.recv(100)
    if not d: break
    c.sendall(d)
";

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn connect(port: u16) -> Result<TcpStream> {
    for _ in 0..200 {
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) {
            return Ok(stream);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("the echo server never listened on port {port}")
}

/// What the client saw of each of four round trips: the echoed line, or how the read failed.
pub fn crash_the_echo_server_on_its_third_reply() -> Result<(Vec<String>, fij::Outcome)> {
    let port = free_port()?;
    let scenario = format!(
        r#"
        [[target]]
        name = "echo"
        command = ["/usr/bin/python3", "-c", {server:?}, "{port}"]

        [[fault]]
        name = "crash-on-3rd-reply"
        target = "echo"
        action = "crash"
        trigger = {{ syscall = "sendto" }}
        nth = 3
        "#,
        server = ECHO_SERVER,
    );
    let running = fij::Campaign::from_toml(&scenario)
        .map_err(|d| anyhow::anyhow!("{d}"))?
        .seed(1)
        .start()?;
    let mut seen = Vec::new();
    let client = connect(port)?;
    client.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    for round in 1..=4 {
        (&client).write_all(format!("line {round}\n").as_bytes())?;
        let mut line = String::new();
        seen.push(match reader.read_line(&mut line) {
            Ok(0) => "EOF".to_string(),
            Ok(_) => line.trim_end().to_string(),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                "silence".to_string()
            }
            Err(e) => format!("error: {e}"),
        });
    }
    let outcome = running.stop().context("ending the campaign")?;
    Ok((seen, outcome))
}

fn main() -> Result<()> {
    let (seen, outcome) = crash_the_echo_server_on_its_third_reply()?;
    println!("the client saw: {seen:?}");
    print!("{}", outcome.summary);
    Ok(())
}
