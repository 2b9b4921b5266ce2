// A well-behaved job beside the attackers: uses 64 MiB, its own /tmp and directory, and checks its work.
fn main() {
    let mut v = vec![0u64; 8 << 20];
    for (i, x) in v.iter_mut().enumerate() { *x = i as u64 * 3; }
    std::fs::write("/tmp/victim-tmp.txt", b"__TOKEN__").unwrap();
    std::fs::write("victim-job.txt", b"__TOKEN__").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let sum: u64 = v.iter().step_by(1 << 16).sum();
    let a = std::fs::read_to_string("/tmp/victim-tmp.txt").unwrap_or_default();
    let b = std::fs::read_to_string("victim-job.txt").unwrap_or_default();
    println!("sum {}", sum);
    println!("{}", if a == "__TOKEN__" && b == "__TOKEN__" { "victim intact" } else { "TAMPERED" });
}
