// Opens a perf event on itself and loads nothing into bpf: both are kernel attack surface a job never needs.
extern "C" { fn syscall(n: i64, ...) -> i64; }

fn main() {
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&1u32.to_ne_bytes());  // PERF_TYPE_SOFTWARE
    attr[4..8].copy_from_slice(&128u32.to_ne_bytes());  // size
    let fd = unsafe { syscall(298, attr.as_ptr(), 0i64, -1i64, -1i64, 0i64) };
    println!("perf: {}", if fd < 0 { format!("blocked ({})", std::io::Error::last_os_error()) } else { "OPENED".to_string() });
    let mut battr = [0u8; 128];
    let rc = unsafe { syscall(321, 0i64, battr.as_mut_ptr(), 128i64) };  // BPF_MAP_CREATE with zeroes
    println!("bpf: blocked ({})", if rc < 0 { std::io::Error::last_os_error().to_string() } else { format!("GOT {}", rc) });
}
