// Allocates and touches 64 MiB blocks until something stops it (up to 4 GiB).
fn main() {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    for i in 0..64 {
        let mut b = vec![0u8; 64 << 20];
        for j in (0..b.len()).step_by(4096) {
            b[j] = i as u8;
        }
        blocks.push(b);
    }
    println!("held {} MiB", blocks.len() * 64);
}
