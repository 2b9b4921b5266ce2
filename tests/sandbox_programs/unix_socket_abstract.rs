// Connects to an abstract unix socket of the host (no file: only the network namespace stops it).
use std::io::Read;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};

fn main() {
    let addr = SocketAddr::from_abstract_name(b"__ABSTRACT__").unwrap();
    match UnixStream::connect_addr(&addr) {
        Ok(mut s) => {
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap_or(0);
            println!("ESCAPED: abstract socket answered {:?}", String::from_utf8_lossy(&buf[..n]));
        }
        Err(e) => println!("blocked: {}", e),
    }
}
