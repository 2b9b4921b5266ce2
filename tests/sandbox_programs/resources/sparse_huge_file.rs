// A 2 GiB sparse file, then real writes into it: the job directory's tmpfs cap stops them.
use std::io::{Seek, SeekFrom, Write};

fn main() {
    let mut f = std::fs::File::create("huge").unwrap();
    println!("set_len: {}", f.set_len(2 << 30).is_ok());
    let block = vec![1u8; 1 << 20];
    let mut written = 0usize;
    for i in 0..1024u64 {
        if f.seek(SeekFrom::Start(i << 20)).is_err() || f.write_all(&block).is_err() { break; }
        written += 1;
    }
    println!("wrote {} MiB", written);
}
