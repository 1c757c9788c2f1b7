//! Interoperability with an independent client in another language: the
//! Python `websockets` library (asyncio API) runs `tests/interop/ws_client.py`
//! against the real broker's `/echo` endpoint.
//!
//! Needs `python3` on PATH with `websockets` installed
//! (`python3 -m pip install -r tests/interop/requirements.txt`). A missing
//! module fails the test rather than skipping it: CI installs it.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use ringcast_e2e::{run_bounded, Broker};

/// Bound on the whole Python run (it normally takes about a second).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on the import probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

const INSTALL_HINT: &str = "python3 -m pip install -r tests/interop/requirements.txt";

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop")
}

/// Fails (never skips) unless `python3` can import the websockets asyncio
/// client API.
fn require_python_websockets() {
    let mut probe = Command::new("python3");
    probe.args([
        "-c",
        "import websockets, websockets.asyncio.client; print(websockets.__version__)",
    ]);
    let out = run_bounded(probe, PROBE_TIMEOUT).unwrap_or_else(|e| {
        panic!(
            "python3 is needed on PATH for the Python interop test: {e}\nthen run: {INSTALL_HINT}"
        )
    });
    assert!(
        out.status.success(),
        "the Python `websockets` package (asyncio client API) is not installed for python3.\n\
         Run: {INSTALL_HINT}\n--- python3 said ---\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn python_websockets_client_against_echo() {
    require_python_websockets();
    let broker = Broker::start(&["--shards", "2"]);

    let mut cmd = Command::new("python3");
    cmd.arg(interop_dir().join("ws_client.py"))
        .arg(broker.url("/echo"))
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let out = run_bounded(cmd, SCRIPT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");

    assert_eq!(
        out.status.code(),
        Some(0),
        "ws_client.py failed ({}); exit 3 means `websockets` is missing: {INSTALL_HINT}\n{report}",
        out.status
    );
    // Every check the script defines ran and passed (not "0 passed").
    let script = std::fs::read_to_string(interop_dir().join("ws_client.py")).unwrap();
    let checks = script.matches("\nasync def check_").count();
    assert!(checks >= 11, "{checks} checks found in ws_client.py");
    let last = stdout.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        format!("python-websockets: {checks} passed, 0 failed"),
        "unexpected summary line\n{report}"
    );
    // Echo the per-check lines (visible with --nocapture).
    print!("{stdout}");
}
