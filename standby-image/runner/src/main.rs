//! `warmpod-runner`: placeholder until the execution core lands.
fn main() {}
