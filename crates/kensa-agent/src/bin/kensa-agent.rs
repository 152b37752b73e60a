//! `kensa-agent`: placeholder until the monitoring-loop issue fills it in.
fn main() {
    eprintln!("kensa-agent: not implemented yet");
    std::process::exit(2);
}
