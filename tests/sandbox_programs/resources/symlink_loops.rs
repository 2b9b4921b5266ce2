// Leaves symlink loops and links to host paths (which exist outside the job) for the cleanup to trip on.
use std::os::unix::fs::symlink;

fn main() {
    let mut made = 0;
    for (target, link) in [("loop-b", "loop-a"), ("loop-a", "loop-b"), ("self", "self"), ("/", "root-link"),
                           ("__HOSTDIR__", "host-dir"), ("__HOSTDIR__/keep.txt", "host-file"),
                           ("/proc/self/root", "proc-root"), ("..", "up"), ("/tmp/loop", "tmp-link")] {
        if symlink(target, link).is_ok() { made += 1; }
    }
    std::fs::create_dir("nest").ok();
    for i in 0..20 {
        if symlink("__HOSTDIR__", format!("nest/host-{}", i)).is_ok() { made += 1; }
    }
    if symlink("/tmp/loop", "/tmp/loop").is_ok() { made += 1; }
    println!("links {}", made);
}
