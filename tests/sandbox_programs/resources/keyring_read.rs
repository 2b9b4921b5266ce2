// Looks for the keys an earlier job of the same uid stored: by name, and by reading every key in the
// uid's user and user-session keyrings. Prints any it can read.
extern "C" { fn syscall(n: i64, ...) -> i64; }

fn read_key(id: i64) -> Option<String> {
    let mut buf = [0u8; 512];
    let n = unsafe { syscall(250, 11i64, id, buf.as_mut_ptr(), buf.len()) };  // KEYCTL_READ
    if n > 0 { Some(String::from_utf8_lossy(&buf[..(n as usize).min(512)]).to_string()) } else { None }
}

fn main() {
    let mut found = 0;
    for name in ["user", "user-session", "session"] {
        let desc = format!("rc-__TOKEN__-{}\0", name);
        let id = unsafe { syscall(249, b"user\0".as_ptr(), desc.as_ptr(), std::ptr::null::<u8>(), 0i64) };
        if id >= 0 {
            if let Some(v) = read_key(id) { found += 1; println!("LEAKED {}: {}", name, v); }
        }
    }
    for (name, ring) in [("user", -4i64), ("user-session", -5)] {
        let mut ids = [0i32; 64];
        let n = unsafe { syscall(250, 11i64, ring, ids.as_mut_ptr(), 256i64) };
        if n < 0 {
            println!("{} keyring: unreadable ({})", name, std::io::Error::last_os_error());
            continue;
        }
        for id in &ids[..(n as usize / 4).min(64)] {
            if let Some(v) = read_key(*id as i64) {
                if v.contains("keysecret") { found += 1; println!("LEAKED from {} keyring: {}", name, v); }
            }
        }
    }
    println!("found {}", found);
}
