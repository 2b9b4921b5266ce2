// Reads every key in its session and user keyrings: the evaluator's session keyring holds a canary.
extern "C" { fn syscall(n: i64, ...) -> i64; }

fn main() {
    for (name, ring) in [("session", -3i64), ("user", -4), ("user-session", -5)] {
        let mut ids = [0i32; 64];
        let n = unsafe { syscall(250, 11i64, ring, ids.as_mut_ptr(), 256i64) };  // KEYCTL_READ
        if n < 0 {
            println!("{}: unreadable ({})", name, std::io::Error::last_os_error());
            continue;
        }
        let count = (n as usize / 4).min(64);
        println!("{}: {} keys", name, count);
        for id in &ids[..count] {
            let mut buf = [0u8; 512];
            let m = unsafe { syscall(250, 11i64, *id as i64, buf.as_mut_ptr(), buf.len()) };
            if m > 0 {
                println!("key {}: {}", id, String::from_utf8_lossy(&buf[..m as usize]));
            }
        }
    }
}
