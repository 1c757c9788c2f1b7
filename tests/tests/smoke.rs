//! The broker starts, upgrades, echoes and answers plain HTTP.

use ringcast_e2e::{http_exchange, Broker, RawWs};
use ringcast_proto::frame::OpCode;

#[test]
fn echo_and_healthz() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut ws = RawWs::connect(broker.addr, "/echo");
    ws.send_frame(true, OpCode::Text, "héllo".as_bytes());
    assert_eq!(
        ws.read_frame(),
        Some((true, OpCode::Text, "héllo".as_bytes().to_vec()))
    );
    let health = http_exchange(broker.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
    assert!(health.ends_with("ok\n"));
}
