// Tries to reach a TCP listener of the host on 127.0.0.1.
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn main() {
    let addr: SocketAddr = "127.0.0.1:__PORT__".parse().unwrap();
    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(_) => println!("CONNECTED"),
        Err(e) => println!("blocked: {}", e),
    }
}
