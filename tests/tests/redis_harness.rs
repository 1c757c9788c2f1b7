//! The `redis-server` harness the cluster-mode tests stand on: it starts,
//! answers, pauses, dies, comes back on the same port, and keeps data
//! across a crash only when told to persist it. Loopback only; every wait
//! is bounded.

use std::io::ErrorKind;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ringcast_e2e::redis::{RedisServer, RespValue};

fn ok() -> RespValue {
    RespValue::Simple("OK".into())
}

fn bulk(s: &str) -> RespValue {
    RespValue::Bulk(Some(s.as_bytes().to_vec()))
}

#[test]
fn starts_and_answers() {
    let r = RedisServer::start();
    assert_eq!(r.url(), format!("redis://127.0.0.1:{}", r.port()));
    assert!(r.pid() > 0 && r.is_running());
    assert_eq!(r.cmd(&["PING"]).as_str(), Some("PONG"));

    assert_eq!(r.cmd(&["SET", "k", "héllo\r\nworld"]), ok());
    assert_eq!(r.cmd(&["GET", "k"]), bulk("héllo\r\nworld"));
    assert!(r.cmd(&["GET", "missing"]).is_nil());
    assert!(r
        .cmd(&["HGETALL", "k"])
        .as_error()
        .unwrap()
        .starts_with("WRONGTYPE"));
    assert_eq!(r.cmd(&["INCRBY", "n", "41"]).as_int(), Some(41));

    assert_eq!(r.cmd(&["HSET", "h", "a", "1", "b", "2"]).as_int(), Some(2));
    let h = r.cmd(&["HGETALL", "h"]);
    let mut pairs: Vec<(&str, &str)> = h
        .as_array()
        .unwrap()
        .chunks(2)
        .map(|kv| (kv[0].as_str().unwrap(), kv[1].as_str().unwrap()))
        .collect();
    pairs.sort();
    assert_eq!(pairs, [("a", "1"), ("b", "2")]);

    r.cmd(&["XADD", "s", "*", "f", "v1"]);
    r.cmd(&["XADD", "s", "*", "f", "v2"]);
    assert_eq!(r.cmd(&["XLEN", "s"]).as_int(), Some(2));
    let range = r.cmd(&["XRANGE", "s", "-", "+"]);
    let entries = range.as_array().unwrap();
    assert_eq!(entries.len(), 2);
    let fields = entries[1].as_array().unwrap()[1].as_array().unwrap();
    assert_eq!(fields, [bulk("f"), bulk("v2")]);

    // The commands the cluster tests use to make trouble.
    assert_eq!(r.cmd(&["CONFIG", "SET", "timeout", "0"]), ok());
    assert_eq!(r.cmd(&["DEBUG", "SLEEP", "0"]), ok());
    let mut held = r.connect();
    assert_eq!(held.cmd(&["CLIENT", "SETNAME", "victim"]).unwrap(), ok());
    let list = r.cmd(&["CLIENT", "LIST"]);
    assert!(list.as_str().unwrap().contains("name=victim"), "{list:?}");
    let id = held.cmd(&["CLIENT", "ID"]).unwrap().as_int().unwrap();
    let kill = r.cmd(&["CLIENT", "KILL", "ID", &id.to_string()]);
    assert_eq!(kill.as_int(), Some(1));
    assert!(
        held.cmd(&["PING"]).is_err(),
        "a killed client's connection ends"
    );
    assert_eq!(r.cmd(&["FLUSHALL"]), ok());
    assert_eq!(r.cmd(&["DBSIZE"]).as_int(), Some(0));

    // Nothing written to disk by default.
    assert_eq!(
        r.cmd(&["CONFIG", "GET", "appendonly"]).as_array().unwrap()[1],
        bulk("no")
    );
    assert_eq!(
        r.cmd(&["CONFIG", "GET", "save"]).as_array().unwrap()[1],
        bulk("")
    );
    assert!(r.log().contains("Ready to accept connections"));
}

#[test]
fn two_servers_side_by_side() {
    let (a, b) = (RedisServer::start(), RedisServer::start());
    assert_ne!(a.port(), b.port());
    assert_ne!(a.dir(), b.dir());
    a.cmd(&["SET", "k", "a"]);
    assert!(b.cmd(&["GET", "k"]).is_nil());
}

#[test]
fn pause_times_out_and_resume_recovers() {
    let mut r = RedisServer::start();
    r.cmd(&["SET", "k", "v"]);
    r.pause();
    assert!(r.is_paused());
    let started = Instant::now();
    let err = r
        .try_cmd(&["PING"], Duration::from_millis(300))
        .expect_err("a paused server answers nothing");
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    r.resume();
    assert_eq!(r.cmd(&["PING"]).as_str(), Some("PONG"));
    assert_eq!(r.cmd(&["GET", "k"]), bulk("v"));
}

#[test]
fn dropping_a_paused_server_ends_it_and_its_dir() {
    let mut r = RedisServer::start();
    let (pid, dir) = (r.pid(), r.dir().to_path_buf());
    r.pause();
    let started = Instant::now();
    drop(r);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!dir.exists(), "{} left behind", dir.display());
    // Reaped, so no such process (pid reuse within this instant is
    // vanishingly unlikely).
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn kill_then_restart_on_the_same_port_loses_unpersisted_data() {
    let mut r = RedisServer::start();
    let port = r.port();
    let first_pid = r.pid();
    r.cmd(&["SET", "k", "v"]);
    r.kill();
    assert!(!r.is_running());
    assert!(
        r.try_cmd(&["PING"], Duration::from_millis(300)).is_err(),
        "nothing listens after kill()"
    );
    r.restart();
    assert_eq!(r.port(), port);
    assert_ne!(r.pid(), first_pid);
    assert_eq!(r.url(), format!("redis://127.0.0.1:{port}"));
    assert!(r.cmd(&["GET", "k"]).is_nil());
}

#[test]
fn aof_always_survives_a_kill() {
    let mut r = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    r.cmd(&["SET", "k", "v"]);
    r.cmd(&["XADD", "s", "*", "f", "v"]);
    r.kill();
    r.restart();
    assert_eq!(r.cmd(&["GET", "k"]), bulk("v"));
    assert_eq!(r.cmd(&["XLEN", "s"]).as_int(), Some(1));
}

#[test]
fn stop_is_clean_and_restart_follows() {
    let mut r = RedisServer::start_with(&["--appendonly", "yes"]);
    r.cmd(&["SET", "k", "v"]);
    r.pause();
    r.stop(); // resumes it first, or SIGTERM would wait forever
    assert!(!r.is_running());
    assert!(r.log().contains("ready to exit"), "{}", r.log_tail());
    assert!(TcpStream::connect(("127.0.0.1", r.port())).is_err());
    r.restart();
    assert_eq!(r.cmd(&["GET", "k"]), bulk("v"));
}

#[test]
fn restart_waits_while_its_port_is_held() {
    let mut r = RedisServer::start();
    r.kill();
    // Something else listens on the port for a while: restart() must not
    // take it for the server, and must get the port once it is free.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", r.port())).unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        drop(squatter);
    });
    let started = Instant::now();
    r.restart();
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(r.cmd(&["PING"]).as_str(), Some("PONG"));
    release.join().unwrap();
    assert!(
        r.log().contains("Address already in use"),
        "{}",
        r.log_tail()
    );
}

#[test]
#[should_panic(expected = "Bad directive")]
fn a_bad_argument_fails_with_the_log() {
    RedisServer::start_with(&["--no-such-option", "1"]);
}
