// Looks for file descriptors inherited from the evaluator (its files, locks, sockets).
fn main() {
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let fd: i32 = entry.file_name().to_string_lossy().parse().unwrap_or(-1);
        let target = std::fs::read_link(entry.path()).map(|p| p.display().to_string()).unwrap_or_default();
        if fd > 3 || (fd == 3 && !target.contains("/proc/")) {
            println!("ESCAPED: inherited fd {} -> {}", fd, target);
        } else {
            println!("fd {} -> {}", fd, target);
        }
    }
}
