// Asks for 8 GiB at once.
fn main() {
    let v = vec![0u8; 8 << 30];
    println!("allocated {}", v.len());
}
