// Leaves files in /tmp, /var/tmp and /dev/shm (world-writable on the host): they must not outlive
// the job nor appear on the host.
fn main() {
    for dir in ["/tmp", "/var/tmp", "/dev/shm"] {
        let path = format!("{}/rcpwn-__TOKEN__", dir);
        match std::fs::write(&path, b"left behind") {
            Ok(()) => println!("wrote {}", path),
            Err(e) => println!("denied {}: {}", path, e),
        }
    }
}
