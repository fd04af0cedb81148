//! Stand-alone entry to the per-container supervisor, used by this crate's tests: accepts the
//! same words as `bosun shim ...`, with or without the leading `shim`.
fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("shim") {
        args.remove(0);
    }
    bosun_agent::shim_main(args)
}
