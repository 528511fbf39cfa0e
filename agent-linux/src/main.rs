//! molt-agent: the device daemon (placeholder until the agent issue lands: it refuses to run rather than pretend).

fn main() {
    eprintln!("molt-agent: not yet implemented (see issue 3)");
    std::process::exit(2);
}
