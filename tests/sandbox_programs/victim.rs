// A well-behaved job that runs next to the attackers: writes a file, waits, and checks that
// nothing changed it (its own output must not be changed by another job).
fn main() {
    std::fs::write("victim.txt", b"__TOKEN__").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let now = std::fs::read_to_string("victim.txt").unwrap_or_default();
    if now == "__TOKEN__" {
        println!("victim intact");
    } else {
        println!("TAMPERED: {:?}", now);
    }
    let planted: Vec<_> = std::fs::read_dir(".").unwrap().flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("planted")).collect();
    println!("planted: {:?}", planted);
}
