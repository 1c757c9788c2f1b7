//! Configuration from a TOML file and `RINGCAST_*` variables, end to end.

use std::process::Command;

use ringcast_e2e::{broker_binary, Broker};

fn write(name: &str, text: &str) -> String {
    let path =
        std::env::temp_dir().join(format!("ringcast-e2e-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn precedence_is_flag_then_env_then_file_then_default() {
    let path = write(
        "prec",
        "shards = 2\nmax-headers = 20\nping-interval = \"10s\"\n",
    );
    let out = Command::new(broker_binary())
        .args(["--config", &path, "--max-headers", "40", "--print-config"])
        .env("RINGCAST_PING_INTERVAL", "20s")
        .env("RINGCAST_MAX_HEADERS", "30")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("shards = 2\n"), "from the file: {text}");
    assert!(
        text.contains("ping-interval = \"20s\"\n"),
        "env beats the file: {text}"
    );
    assert!(
        text.contains("max-headers = 40\n"),
        "the flag beats env and file: {text}"
    );
    assert!(text.contains("idle-timeout = \"75s\"\n"), "default: {text}");
}

#[test]
fn a_broker_runs_from_a_config_file() {
    let path = write(
        "run",
        "shards = 2\nmax-head-size = \"2KiB\"\nsubprotocols = [\"ringcast.v1\"]\n",
    );
    let broker = Broker::start(&["--config", &path]);
    for needle in [
        "shards             2",
        "max-head-size      2048 bytes",
        "subprotocols       ringcast.v1",
    ] {
        assert!(
            broker.banner.contains(needle),
            "{needle:?} in {}",
            broker.banner
        );
    }
}

#[test]
fn bad_config_is_a_clear_error_at_start_up() {
    for (name, text, want) in [
        ("unknown", "shardz = 2\n", "unknown key `shardz`"),
        (
            "value",
            "max-frame-size = \"lots\"\n",
            "key `max-frame-size`",
        ),
        (
            "invalid",
            "idle-timeout = \"5s\"\nping-interval = \"10s\"\n",
            "--idle-timeout",
        ),
    ] {
        let path = write(name, text);
        let out = Command::new(broker_binary())
            .args(["--config", &path])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
    let out = Command::new(broker_binary())
        .env("RINGCAST_SHARDS", "many")
        .arg("--print-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--shards"));
}
