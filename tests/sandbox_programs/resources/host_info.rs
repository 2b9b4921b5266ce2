// Host information a job should not see: the host's name, its kernel command line, other uids' keys,
// disks, kernel symbols, boot id and the load of everyone's jobs.
fn main() {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    println!("hostname {}", name.trim());
    for path in ["/proc/cmdline", "/proc/keys", "/proc/key-users", "/proc/diskstats", "/proc/kallsyms",
                 "/proc/sys/kernel/random/boot_id", "/proc/loadavg", "/proc/partitions", "/proc/modules"] {
        match std::fs::read(path) {
            Ok(b) if b.is_empty() => println!("{} empty", path),
            Ok(b) => println!("{} SHOWS {} bytes: {}", path, b.len(), String::from_utf8_lossy(&b[..b.len().min(60)])),
            Err(e) => println!("{} unreadable ({})", path, e),
        }
    }
}
