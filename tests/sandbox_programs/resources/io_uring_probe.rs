// Sets up an io_uring: its opcodes make sockets and open files without the system calls a filter sees.
extern "C" { fn syscall(n: i64, ...) -> i64; }

fn main() {
    let mut params = [0u8; 120];
    let fd = unsafe { syscall(425, 8i64, params.as_mut_ptr()) };
    if fd < 0 {
        println!("blocked: {}", std::io::Error::last_os_error());
    } else {
        println!("IO_URING ring fd {}", fd);
    }
}
