isolated_executor::enable_test_support!();

use isolated_executor::*;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Serialize, Deserialize)]
enum Act {
    Ok(u32),
    Err(String),
    Sleep(u64),
    Panic,
    Abort,
    Segv,
    Exit(i32),
    Overflow,
    Alloc(usize),
}

#[derive(Serialize, Deserialize)]
struct H;
impl Handler for H {
    type Args = Act;
    type Output = u32;
    type Error = String;
    fn execute(&self, a: Act, _: &Context) -> Result<u32, String> {
        match a {
            Act::Ok(v) => Ok(v),
            Act::Err(e) => Err(e),
            Act::Sleep(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                Ok(0)
            }
            Act::Panic => panic!("boom"),
            Act::Abort => std::process::abort(),
            Act::Segv => {
                unsafe { std::ptr::null_mut::<u32>().write_volatile(1) };
                Ok(1)
            }
            Act::Exit(c) => std::process::exit(c),
            Act::Overflow => {
                fn r(n: u64) -> u64 {
                    let a = [n; 64];
                    std::hint::black_box(&a);
                    r(n + 1) + a[3]
                }
                Ok(r(0) as u32)
            }
            Act::Alloc(n) => {
                let v = vec![1u8; n];
                Ok(std::hint::black_box(v).len() as u32)
            }
        }
    }
}

#[test]
fn smoke() {
    let o = defaults().timeout(Duration::from_millis(300));
    for a in [
        Act::Ok(5),
        Act::Err("x".into()),
        Act::Sleep(1000),
        Act::Panic,
        Act::Abort,
        Act::Segv,
        Act::Exit(3),
        Act::Overflow,
        Act::Alloc(100 << 20),
        Act::Alloc(1 << 20),
    ] {
        let t = std::time::Instant::now();
        let r = execute_isolated_report(&H, a, &Context::new(), &o);
        println!(
            "{:?} {:?} rss={} stderr={:?}",
            r.outcome,
            t.elapsed(),
            r.peak_rss_bytes,
            r.stderr_tail
        );
    }
}
