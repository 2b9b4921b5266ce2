// Creates empty files in /tmp until refused (the private /tmp caps inodes, not only blocks).
fn main() {
    let mut made = 0usize;
    for i in 0..200_000 {
        if std::fs::File::create(format!("/tmp/e{}", i)).is_err() { break; }
        made += 1;
    }
    println!("files={}", made);
}
