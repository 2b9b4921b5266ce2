// Tries to create files outside its working directory.
use std::fs;

fn main() {
    for path in ["/root/pwned-__TOKEN__", "__REPO__/pwned-__TOKEN__"] {
        match fs::write(path, b"pwned") {
            Ok(()) => println!("WROTE {}", path),
            Err(e) => println!("denied {}: {}", path, e),
        }
    }
    fs::write("inside.txt", b"ok").expect("own workdir is writable");
    println!("inside ok");
}
