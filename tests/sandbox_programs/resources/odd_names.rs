// Files whose names are hard to handle: newlines, backslashes, bytes that are not UTF-8, 255 bytes, dashes.
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

fn main() {
    let long = "n".repeat(255);
    let names: Vec<&[u8]> = vec![b"new\nline", b"back\\slash", b"\xff\xfe\xfd", long.as_bytes(), b"-rf",
                                 b" space ", b"*", b"...", b"\x01\x02", b"tab\there", b"quote'\""];
    let mut made = 0;
    for n in &names {
        let name = OsStr::from_bytes(n);
        if std::fs::write(name, b"x").is_ok() { made += 1; }
        let d = [*n, b".d"].concat();
        if std::fs::create_dir(OsStr::from_bytes(&d)).is_ok() {
            std::fs::write(std::path::Path::new(OsStr::from_bytes(&d)).join(name), b"y").ok();
            made += 1;
        }
    }
    println!("odd names {}", made);
}
