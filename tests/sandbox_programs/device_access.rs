// Opens host devices and kernel interfaces.
fn main() {
    for path in ["/dev/mem", "/dev/kmsg", "/dev/sda", "/dev/vda", "/dev/nvme0n1", "/dev/console",
                 "/sys/kernel", "/sys/fs/cgroup", "/proc/kcore", "/proc/sysrq-trigger"] {
        match std::fs::File::open(path) {
            Ok(_) => println!("opened {}", path),
            Err(e) => println!("denied {}: {}", path, e),
        }
        if path == "/proc/sysrq-trigger" && std::fs::write(path, b"h").is_ok() {
            println!("ESCAPED: wrote {}", path);
        }
    }
}
