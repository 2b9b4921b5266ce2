// Stores a secret in the uid's user keyring, user-session keyring and session keyring: a later job
// given the same uid must not find it.
extern "C" { fn syscall(n: i64, ...) -> i64; }

fn main() {
    let payload = b"keysecret-__TOKEN__";
    for (name, ring) in [("user", -4i64), ("user-session", -5), ("session", -3)] {
        let desc = format!("rc-__TOKEN__-{}\0", name);
        let id = unsafe { syscall(248, b"user\0".as_ptr(), desc.as_ptr(), payload.as_ptr(), payload.len(), ring) };
        if id < 0 {
            println!("{}: blocked ({})", name, std::io::Error::last_os_error());
        } else {
            println!("{}: stored key {}", name, id);
        }
    }
}
